// The process helper itself: the other integration tests trust its waits and kills.
#include <catch2/catch.hpp>

#include <csignal>

#include "process.hpp"

using namespace tokenmill::testing;

TEST_CASE("process: run captures the exit code and both output streams", "[integration][process]") {
  auto r = run({"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}, milliseconds(10000));
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code == 3);
  CHECK(r.out == "out\n");
  CHECK(r.err == "err\n");
}

TEST_CASE("process: run kills a child that overstays its timeout", "[integration][process]") {
  auto r = run({"/bin/sh", "-c", "echo started; exec sleep 30"}, milliseconds(300));
  CHECK(r.timed_out);
  CHECK(r.out == "started\n");
}

TEST_CASE("process: waits for a line then signals and reports the signal",
          "[integration][process]") {
  process p(
      {"/bin/sh", "-c", "printf 'partial'; echo ' line one'; echo 'ready: 42'; exec sleep 30"});
  auto line = p.wait_for_line("ready:", milliseconds(10000));
  REQUIRE(line);
  CHECK(*line == "ready: 42");
  CHECK_FALSE(p.wait_for_line("never printed", milliseconds(100)));
  CHECK(p.wait_for_output(5, milliseconds(1000)));
  CHECK(p.running());
  p.signal(SIGTERM);
  auto code = p.wait(milliseconds(10000));
  REQUIRE(code);
  CHECK(*code == 128 + SIGTERM);
  CHECK_FALSE(p.running());
}

TEST_CASE("process: a child that ignores SIGTERM is killed when the wait times out",
          "[integration][process]") {
  process p({"/bin/sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"});
  REQUIRE(p.wait_for_line("up", milliseconds(10000)));
  p.signal(SIGTERM);
  CHECK_FALSE(p.wait(milliseconds(300)));
  CHECK_FALSE(p.running());
}

TEST_CASE("process: a missing executable is an error and not a hang", "[integration][process]") {
  // posix_spawn reports exec failure either as an error or as exit code 127.
  try {
    auto r = run({"/nonexistent/tokenmill-test-binary"}, milliseconds(5000));
    CHECK(r.exit_code == 127);
  } catch (const std::system_error&) {
    SUCCEED("posix_spawn reported the failure");
  }
}
