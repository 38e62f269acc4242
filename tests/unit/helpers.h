// What several unit test files need: the real TorchScript fixtures (scripts/make_fixtures.py) and
// the kind of ttq::Error a call throws.
#pragma once
#include <functional>
#include <string>

#include "catch.h"
#include "core/error.h"
#include "formats/torchscript.h"

namespace ttq::test {

inline torch::jit::Module fixture(const std::string& name) {
  return load_torchscript(std::string(TTQ_FIXTURES) + "/" + name).module;
}

inline ErrorKind kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  FAIL("no ttq::Error thrown");
  return ErrorKind::Runtime;
}

}  // namespace ttq::test
