// A C ABI over torch's own c10d (the process groups PyTorch DDP runs on), for src/dist.rs: a
// TCPStore for rendezvous and a Gloo process group with the collectives host needs. Every
// function returns 0 on success, or -1 with a malloc'ed message in *err (freed by the caller with
// dualign_c10d_free_error); no C++ exception crosses the boundary.
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
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

// Connects to (or, with is_server, hosts) the store at host:port and joins a Gloo group of
// `world` ranks as `rank`; `timeout_ms` bounds the rendezvous and every collective.
int dualign_c10d_new(const char* host, int port, int rank, int world, int is_server, long timeout_ms, void** out, char** err) {
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
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    *out = new Group{store, pg};
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
    static_cast<Group*>(group)->pg->allreduce(v, o)->wait();
  });
}

// Copies rank `root`'s `t` into every rank's `t`.
int dualign_c10d_broadcast(void* group, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<Group*>(group)->pg->broadcast(v, o)->wait();
  });
}

// Waits until every rank has reached it.
int dualign_c10d_barrier(void* group, char** err) {
  return guarded(err, [&] { static_cast<Group*>(group)->pg->barrier()->wait(); });
}
}
