// A C ABI over torch's own c10d (the process groups PyTorch DDP runs on), for src/dist.rs: a
// TCPStore for rendezvous, a Gloo process group for CPU tensors and, in builds with the CUDA and
// NCCL headers (DUALIGN_NCCL), an NCCL process group for CUDA tensors, with the collectives host
// needs; each collective goes to NCCL when the group has one and the tensor is on a GPU, else to
// Gloo (as PyTorch's "cpu:gloo,cuda:nccl"). Every function returns 0 on success, or -1 with a
// malloc'ed message in *err (freed by the caller with dualign_c10d_free_error); no C++ exception
// crosses the boundary.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DUALIGN_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  // NCCL for CUDA tensors, when built and asked for.
  c10::intrusive_ptr<c10d::Backend> nccl;

  c10d::Backend& backend_for(const at::Tensor& t) {
    if (nccl && t.is_cuda()) {
      return *nccl;
    }
    return *pg;
  }
};

int fail(char** err, const std::string& what) {
  if (err) {
    *err = strdup(what.c_str());
  }
  return -1;
}

template <typename F>
int guarded(char** err, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    return fail(err, e.what());
  } catch (...) {
    return fail(err, "unknown C++ exception");
  }
}
}  // namespace

extern "C" {

// The backends this build has: 1 Gloo, 2 NCCL (a bit mask).
int dualign_c10d_backends() {
#ifdef DUALIGN_NCCL
  return 3;
#else
  return 1;
#endif
}

// Connects to (or, with is_server, hosts) the store at host:port and joins a Gloo group of
// `world` ranks as `rank`, and with `nccl` set an NCCL group too (each rank's current CUDA
// device must be set by the caller); `timeout_ms` bounds the rendezvous and every collective.
int dualign_c10d_new(const char* host, int port, int rank, int world, int is_server, int nccl, long timeout_ms, void** out, char** err) {
  return guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = is_server != 0;
    so.numWorkers = world;
    so.waitWorkers = false;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    auto options = c10d::ProcessGroupGloo::Options::create();
    options->timeout = timeout;
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store), rank, world, options);
    c10::intrusive_ptr<c10d::Backend> nccl_pg;
    if (nccl) {
#ifdef DUALIGN_NCCL
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = timeout;
      nccl_pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("nccl", store), rank, world, nccl_options);
#else
      throw std::runtime_error("this build of host has no NCCL (it was compiled without the CUDA and NCCL headers)");
#endif
    }
    *out = new Group{store, pg, nccl_pg};
  });
}

void dualign_c10d_free(void* group) { delete static_cast<Group*>(group); }

void dualign_c10d_free_error(char* err) { free(err); }

// Sums `t` over the ranks, in place.
int dualign_c10d_all_reduce_sum(void* group, at::Tensor* t, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    static_cast<Group*>(group)->backend_for(*t).allreduce(v, o)->wait();
  });
}

// Copies rank `root`'s `t` into every rank's `t`.
int dualign_c10d_broadcast(void* group, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<Group*>(group)->backend_for(*t).broadcast(v, o)->wait();
  });
}

// Waits until every rank has reached it (on Gloo: a CPU-side meeting point).
int dualign_c10d_barrier(void* group, char** err) {
  return guarded(err, [&] { static_cast<Group*>(group)->pg->barrier()->wait(); });
}
}
