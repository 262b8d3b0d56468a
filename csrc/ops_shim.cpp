// A C ABI over ATen kernels that tch does not bind: the fused AdamW step (`torch._fused_adamw_`,
// what torch.optim.AdamW runs with fused=True: one pass over each parameter, its gradient and
// both moments; src/train/optim.rs) and oneDNN's linear layer (`mkldnn::_linear_pointwise`, the
// kernel torch.compile's CPU backend calls, with a backward of its own; src/ops.rs). Each returns 0 on success, or -1
// with a malloc'ed message in *err (freed by the caller with dualign_ops_free_error); no C++
// exception crosses the boundary.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/full.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <exception>
#include <vector>

// oneDNN's matmul as torch calls it for bf16 (ATen/native/mkldnn/Matmul.cpp, exported by
// libtorch_cpu; its header is not in the wheel): result = mat1 · mat2 for 2-D f32 tensors, each
// contiguous or the transpose of a contiguous one, read in place.
namespace at::native {
void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta, float alpha);
}

namespace {
// Runs `f`, which returns the call's code; a C++ exception becomes -1 with its message in *err.
template <typename F>
int guarded(char** err, F f) {
  try {
    return f();
  } catch (const std::exception& e) {
    if (err) *err = strdup(e.what());
  } catch (...) {
    if (err) *err = strdup("unknown C++ exception");
  }
  return -1;
}

// oneDNN's linear, when this torch registers it.
const std::optional<c10::OperatorHandle>& linear_pointwise() {
  static const auto op = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  return op;
}

// x Wᵀ + b on oneDNN (x [..., in], W [out, in], strided views accepted); b may be undefined.
at::Tensor onednn_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const auto& op = linear_pointwise();
  std::vector<c10::IValue> stack{x, w, b.defined() ? c10::IValue(b) : c10::IValue(), c10::IValue(std::string("none")),
                                 c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
  op->callBoxed(&stack);
  return stack.at(0).toTensor();
}

// a · b for 2-D f32 tensors by oneDNN's matmul (each operand contiguous or the transpose of a
// contiguous one, read in place). Zeros when the inner dimension is empty: the matmul leaves such
// an output unwritten.
at::Tensor onednn_matmul(const at::Tensor& a, const at::Tensor& b) {
  if (a.size(1) == 0) return at::zeros({a.size(0), b.size(1)}, a.options());
  auto y = at::empty({a.size(0), b.size(1)}, a.options());
  at::native::mkldnn_matmul(a, b, y, 0.f, 1.f);
  return y;
}

// x Wᵀ without a bias by oneDNN's matmul, reading W [out, in] in place as the transpose of x's
// operand: the linear primitive reorders W into a blocked layout on every call, which made the LM
// head's product ([n, 576] · [576, 49152], a 113 MB weight) run at 160-170 GFLOP/s against the
// matmul's 180-196; the other layers' shapes measure the same either way.
at::Tensor onednn_mm_nt(const at::Tensor& x, const at::Tensor& w) {
  auto y = onednn_matmul(x.reshape({-1, x.size(-1)}).contiguous(), w.contiguous().t());
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  return y.view(shape);
}

// The backward of y = x Wᵀ (+ b) on oneDNN too: dx = dy W, dW = dyᵀ x (and db = Σ dy), each only
// where autograd asks for it (a frozen weight under LoRA gets none). dW by oneDNN's matmul, which
// reads dyᵀ as the transpose it is: the linear primitive copied dy and x into transposed layouts
// first, and ran these products at 120-180 GFLOP/s against the matmul's 195-220 on a 2-core AMD
// EPYC (the LM head's [V, n] · [n, H] at 121 against 196).
torch::autograd::variable_list linear_backward(torch::autograd::AutogradContext* ctx, const at::Tensor& g, bool bias) {
  auto saved = ctx->get_saved_variables();
  const at::Tensor &x = saved[0], &w = saved[1];
  auto g2 = g.reshape({-1, g.size(-1)});
  torch::autograd::variable_list out(bias ? 3 : 2);
  if (ctx->needs_input_grad(0)) out[0] = onednn_mm(g, w.t(), at::Tensor());
  if (ctx->needs_input_grad(1)) out[1] = onednn_matmul(g2.contiguous().t(), x.reshape({-1, x.size(-1)}).contiguous());
  if (bias && ctx->needs_input_grad(2)) out[2] = g2.sum(0);
  return out;
}

// The linear layer as an autograd node, without and with a bias (an autograd function's inputs
// are all defined tensors).
struct OneDnnLinear : public torch::autograd::Function<OneDnnLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({x, w});
    return onednn_mm_nt(x, w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    return linear_backward(ctx, grads[0], false);
  }
};

struct OneDnnLinearBias : public torch::autograd::Function<OneDnnLinearBias> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    ctx->save_for_backward({x, w});
    return onednn_mm(x, w, b);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    return linear_backward(ctx, grads[0], true);
  }
};
}  // namespace

extern "C" {

void dualign_ops_free_error(char* err) { free(err); }

// One AdamW step over n parameters at step count `step` (already counting this step), with
// decoupled weight decay `weight_decay` (torch.optim.AdamW's update).
int dualign_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs, int n,
                        double lr, double beta1, double beta2, double weight_decay, double eps, double step, char** err) {
  return guarded(err, [&] {
    c10::AutoGradMode no_grad(false);  // an optimizer step is not part of any graph
    std::vector<at::Tensor> p, g, m, v, steps;
    for (int i = 0; i < n; i++) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(at::full({}, step, params[i]->options().dtype(at::kFloat)));
    }
    at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, false, false);
    return 0;
  });
}

// y = x Wᵀ + b by oneDNN for f32 CPU tensors, forward and (when autograd records the call)
// backward: 1 (and nothing done) when the call does not qualify (another device or type), or when
// this torch has no oneDNN linear; then the caller takes torch's own linear.
int dualign_onednn_linear(at::Tensor* x, at::Tensor* w, at::Tensor* b, at::Tensor** out, char** err) {
  return guarded(err, [&] {
    auto plain = [](const at::Tensor& t) { return t.is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided; };
    if (!plain(*x) || !plain(*w) || (b && !plain(*b)) || x->dim() < 2 || !linear_pointwise()) {
      return 1;
    }
    at::Tensor bias = b ? *b : at::Tensor();
    bool graph = c10::GradMode::is_enabled() && (x->requires_grad() || w->requires_grad() || (b && b->requires_grad()));
    at::Tensor y;
    if (!graph) {
      y = b ? onednn_mm(*x, *w, bias) : onednn_mm_nt(*x, *w);
    } else if (b) {
      y = OneDnnLinearBias::apply(*x, *w, *b);
    } else {
      y = OneDnnLinear::apply(*x, *w);
    }
    *out = new at::Tensor(y);
    return 0;
  });
}
}
