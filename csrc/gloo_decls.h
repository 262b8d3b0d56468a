// The few declarations of Gloo that torch's c10d headers name. The torch wheel's libtorch_cpu is
// built with Gloo but ships none of Gloo's headers; c10d's ProcessGroupGloo.hpp only names these
// types (pointers to them, and a Store interface its inline GlooStore implements). The shim never
// creates or touches a gloo object itself (check: `nm -u` of the shim lists no gloo:: symbol), so
// declarations that parse are all it needs. Included instead of <gloo/...> by the -I folder
// csrc/gloo_include, whose files include this one.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
namespace rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
};
}  // namespace rendezvous
}  // namespace gloo
