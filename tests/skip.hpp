#pragma once
/// A test case that cannot run on this machine (no GPU, no root, a missing tool) must show
/// as skipped in ctest, never as passed. Catch2 2.13 has no skip, so a skipping test
/// prints a marker line that every test executable's ctest entries match with
/// SKIP_REGULAR_EXPRESSION (tests/CMakeLists.txt), then returns. Only for a whole test
/// case: a section that skips while the rest of its test runs keeps a plain WARN.
#include <iostream>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

namespace tokenmill::testing {

/// Prints the marker (and a WARN with the reason); the caller then returns.
inline void announce_skip(const std::string& why) {
  std::cout << "TOKENMILL_SKIPPED: " << why << std::endl;
  WARN("skipped: " << why);
}

}  // namespace tokenmill::testing

/// Skips the current test case with a reason (streamed: TM_SKIP("no " << tool)).
#define TM_SKIP(why)                                         \
  do {                                                       \
    std::ostringstream tm_skip_why_;                         \
    tm_skip_why_ << why;                                     \
    ::tokenmill::testing::announce_skip(tm_skip_why_.str()); \
    return;                                                  \
  } while (0)
