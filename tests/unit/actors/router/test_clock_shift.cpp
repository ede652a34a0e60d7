#include <catch2/catch.hpp>

#include <vector>

#include "actors/router/clock_shift.hpp"

using namespace tokenmill;

TEST_CASE("clock shift: offset of the source minus offset of the target", "[clock_shift]") {
  const std::vector<int64_t> offsets{0, 1000, -500};
  CHECK(clock_shift(offsets, 1, 0) == 1000);
  CHECK(clock_shift(offsets, 0, 1) == -1000);
  CHECK(clock_shift(offsets, 2, 1) == -1500);
  CHECK(clock_shift(offsets, 1, 1) == 0);
  // A node without an estimate counts as offset 0.
  CHECK(clock_shift(offsets, 7, 1) == -1000);
  CHECK(clock_shift(offsets, 1, 7) == 1000);
  CHECK(clock_shift({}, 3, 4) == 0);
}

TEST_CASE("clock shift: every hop of a trace moves onto the local clock", "[clock_shift]") {
  const std::vector<int64_t> offsets{0, 1000, -500};
  trace tr;
  tr.id = 5;
  tr.hops.push_back({stage::arrived, 0, 10'000});
  tr.hops.push_back({stage::routed, 1, 20'000});
  tr.hops.push_back({stage::finished, 2, 30'000});
  auto out = on_local_clock(tr, offsets, 1);
  CHECK(out.id == 5);
  REQUIRE(out.hops.size() == 3);
  CHECK(out.hops[0].t_ns == 10'000 - 1000);
  CHECK(out.hops[1].t_ns == 20'000);
  CHECK(out.hops[2].t_ns == 30'000 - 1500);
  CHECK(out.hops[2].where == stage::finished);
  CHECK(out.hops[2].node == 2);
}
