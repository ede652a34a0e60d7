#pragma once
/// Helpers for tests of functions that return result<T>: the value (failing the test case
/// with the error's message when there is none) and the error's message as text, so that
/// Catch's string matchers apply.
#include <catch2/catch.hpp>

#include <string>
#include <utility>

#include "common/result.hpp"

namespace tokenmill::test {

/// `r.error().message` when `r` failed, else "".
template <class T>
std::string error_text(const result<T>& r) {
  return r ? std::string() : r.error().message;
}

/// The value of `r`; fails the running test case with the error's message when `r` failed.
template <class T>
T value_or_fail(result<T> r) {
  if (!r) FAIL(r.error().message);
  return std::move(*r);
}

/// Checks that `r` failed with `code` and a message that starts with `prefix` and contains
/// `what`: how engine tests say "refused, for this reason".
template <class T>
void check_refused(const result<T>& r, errc code, const std::string& prefix,
                   const std::string& what) {
  REQUIRE_FALSE(r);
  CHECK(r.error().code == code);
  CHECK_THAT(r.error().message, Catch::StartsWith(prefix) && Catch::Contains(what));
}

}  // namespace tokenmill::test
