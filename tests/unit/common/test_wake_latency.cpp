#include <catch2/catch.hpp>

#include <vector>

#include "common/clock.hpp"
#include "common/wake_latency.hpp"

using namespace tokenmill;

TEST_CASE("summarize_delays: nearest-rank quantiles in µs", "[wake_latency]") {
  std::vector<int64_t> ns;
  for (int64_t i = 1000; i >= 1; --i)
    ns.push_back(i * 1000);  // 1..1000 µs, reversed
  auto s = summarize_delays(ns);
  CHECK(s.samples == 1000);
  CHECK(s.p50_us == Approx(501));  // rank round(0.5 * 999) = 500 -> 501 µs
  CHECK(s.p90_us == Approx(900));
  CHECK(s.p99_us == Approx(990));
  CHECK(s.p999_us == Approx(999));
  CHECK(s.max_us == Approx(1000));
  CHECK(s.mean_us == Approx(500.5));

  std::vector<int64_t> none;
  auto z = summarize_delays(none);
  CHECK(z.samples == 0);
  CHECK(z.max_us == 0);
}

TEST_CASE("wake options: bad values are refused, naming them", "[wake_latency]") {
  wake_options ok;
  CHECK(validate(ok).empty());
  wake_options o = ok;
  o.period_ns = 0;
  CHECK_THAT(validate(o), Catch::Contains("period") && Catch::Contains("got 0 ms"));
  o = ok;
  o.count = 3;
  CHECK_THAT(validate(o), Catch::Contains("count") && Catch::Contains("got 3"));
  o = ok;
  o.spin_ns = o.period_ns;
  CHECK_THAT(validate(o), Catch::Contains("spin margin"));
  o.spin_ns = -1;
  CHECK_THAT(validate(o), Catch::Contains("spin margin"));
}

TEST_CASE("wait_until_ns never returns before its deadline", "[wake_latency]") {
  for (int64_t ahead : {int64_t{0}, int64_t{50'000}, int64_t{300'000}, int64_t{2'000'000}}) {
    const int64_t deadline = now_ns() + ahead;
    wait_until_ns(deadline);
    CHECK(now_ns() >= deadline);
  }
  wait_until_ns(now_ns() - 1'000'000);  // a deadline already past returns at once
}

TEST_CASE("measure_wake_latency fills every row with ordered quantiles", "[wake_latency]") {
  wake_options o;
  o.period_ns = 200'000;
  o.count = 20;
  o.spin_ns = 50'000;
  REQUIRE(validate(o).empty());
  auto r = measure_wake_latency(o);
  for (const auto* s : {&r.sleep, &r.spin, &r.handoff}) {
    CHECK(s->samples == 20);
    CHECK(s->p50_us >= 0);
    CHECK(s->p50_us <= s->p90_us);
    CHECK(s->p90_us <= s->p99_us);
    CHECK(s->p99_us <= s->p999_us);
    CHECK(s->p999_us <= s->max_us);
  }
}
