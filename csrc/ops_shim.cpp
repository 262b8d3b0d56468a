// A C ABI over ATen kernels that tch does not bind: the fused AdamW step (`torch._fused_adamw_`,
// what torch.optim.AdamW runs with fused=True: one pass over each parameter, its gradient and
// both moments; src/train/optim.rs) and oneDNN's linear layer (`mkldnn::_linear_pointwise`, the
// kernel torch.compile's CPU backend calls; src/model/layers.rs). Each returns 0 on success, or -1
// with a malloc'ed message in *err (freed by the caller with dualign_optim_free_error); no C++
// exception crosses the boundary.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/full.h>
#include <c10/core/GradMode.h>

#include <cstring>
#include <exception>
#include <vector>

extern "C" {

void dualign_optim_free_error(char* err) { free(err); }

// One AdamW step over n parameters at step count `step` (already counting this step), with
// decoupled weight decay `weight_decay` (torch.optim.AdamW's update).
int dualign_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs, int n,
                        double lr, double beta1, double beta2, double weight_decay, double eps, double step, char** err) {
  try {
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
  } catch (const std::exception& e) {
    if (err) *err = strdup(e.what());
  } catch (...) {
    if (err) *err = strdup("unknown C++ exception");
  }
  return -1;
}

// y = x Wᵀ + b by oneDNN, for f32 CPU tensors outside autograd: 1 (and nothing done) when the
// call does not qualify (another device or type, or a graph to record), or when this torch has
// no oneDNN linear; then the caller takes torch's own linear.
int dualign_onednn_linear(at::Tensor* x, at::Tensor* w, at::Tensor* b, at::Tensor** out, char** err) {
  try {
    auto plain = [](const at::Tensor& t) { return t.is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided; };
    bool graph = c10::GradMode::is_enabled() && (x->requires_grad() || w->requires_grad() || (b && b->requires_grad()));
    if (!plain(*x) || !plain(*w) || (b && !plain(*b)) || graph || x->dim() < 2) {
      return 1;
    }
    static const auto op = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
    if (!op) {
      return 1;
    }
    std::vector<c10::IValue> stack{*x, *w, b ? c10::IValue(*b) : c10::IValue(), c10::IValue(std::string("none")),
                                   c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
    op->callBoxed(&stack);
    *out = new at::Tensor(stack.at(0).toTensor());
    return 0;
  } catch (const std::exception& e) {
    if (err) *err = strdup(e.what());
  } catch (...) {
    if (err) *err = strdup("unknown C++ exception");
  }
  return -1;
}
}
