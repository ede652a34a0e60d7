#include <catch2/catch.hpp>

#include "actors/router/itl_attribution.hpp"

using namespace tokenmill;

namespace {
constexpr int64_t ms = 1'000'000;

/// A request decoded in 10 ms steps, each token released 0.2 ms after its step.
struct steady {
  itl_attribution a;
  int64_t t = 100 * ms;
  uint32_t index = 0;
  int64_t prev_end = t - 200'000;
  steady() { a.add(index++, t, 0, 0, 0, 0); }  // the first token (from prefill)
  itl_cause step(int64_t step_ms = 10, uint32_t b = 4, uint32_t prefill = 0, int64_t idle_ms = 0,
                 int64_t delivery_us = 200) {
    int64_t start = prev_end + idle_ms * ms;
    int64_t end = start + step_ms * ms;
    prev_end = end;
    t = end + delivery_us * 1000;
    return a.add(index++, t, start, end, b, prefill);
  }
};
}  // namespace

TEST_CASE("steady decoding has no spikes", "[itl]") {
  steady s;
  for (int i = 0; i < 50; ++i)
    CHECK(s.step() == itl_cause::none);
  auto sp = s.a.spikes();
  REQUIRE(sp.size() == static_cast<size_t>(itl_cause::count_));
  for (auto n : sp)
    CHECK(n == 0);
  CHECK(s.a.steps().size() == 51);
  CHECK(s.a.steps()[10].batch == 4);
}

TEST_CASE("spikes are attributed to what the decode step did", "[itl]") {
  steady s;
  for (int i = 0; i < 5; ++i)
    s.step();
  SECTION("a piggy-backed prefill") {
    CHECK(s.step(60, 4, 512) == itl_cause::prefill);
  }
  SECTION("the batch grew") {
    CHECK(s.step(25, 9) == itl_cause::batch_growth);
  }
  SECTION("the worker sat between steps") {
    CHECK(s.step(10, 4, 0, 30) == itl_cause::transfer_wait);
  }
  SECTION("the token was late reaching the router") {
    CHECK(s.step(10, 4, 0, 0, 30'000) == itl_cause::network);
  }
  SECTION("a slow step without another explanation") {
    CHECK(s.step(40) == itl_cause::slow_step);
  }
  SECTION("a small excess is no spike") {
    CHECK(s.step(11) == itl_cause::none);
  }
}

TEST_CASE("spike counts accumulate by cause, and warm-up gaps are never spikes", "[itl]") {
  steady s;
  CHECK(s.step(80, 4, 100) == itl_cause::none);  // no typical gap yet
  for (int i = 0; i < 10; ++i)
    s.step();
  s.step(60, 4, 256);
  s.step();
  s.step(60, 4, 256);
  s.step(30, 12);
  auto sp = s.a.spikes();
  CHECK(sp[static_cast<size_t>(itl_cause::prefill)] == 2);
  CHECK(sp[static_cast<size_t>(itl_cause::batch_growth)] == 1);
  CHECK(sp[static_cast<size_t>(itl_cause::none)] == 0);
  CHECK(s.a.steps().back().cause == itl_cause::batch_growth);
  CHECK(to_string(itl_cause::transfer_wait) == "transfer_wait");
}
