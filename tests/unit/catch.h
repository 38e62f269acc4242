// Catch2 2 (Debian 12) and Catch2 3 (Debian 13) behind one include: the tests use `Approx` and
// `Catch::Contains` and `Catch::StartsWith` as Catch2 2 spells them, and this header gives Catch2 3 the same names.
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
namespace Catch {
inline Matchers::StringContainsMatcher Contains(const std::string& text) {
  return Matchers::ContainsSubstring(text);
}
using Matchers::StartsWith;
}  // namespace Catch
#else
#include <catch2/catch.hpp>
#endif
