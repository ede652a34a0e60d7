#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "actors/router/admission_policy.hpp"

using namespace tokenmill;

namespace {

constexpr int64_t ms = 1'000'000;
constexpr int64_t s = 1'000 * ms;

/// What a stretch of simulated traffic did.
struct outcome {
  uint64_t offered = 0, admitted = 0, rejected = 0;
  uint32_t max_waiting = 0;
  std::vector<int64_t> retry_after_ns;  ///< of each refusal
  std::vector<int64_t> estimates_ns;    ///< of each admission with a known rate
  double rejected_fraction() const {
    return offered ? static_cast<double>(rejected) / static_cast<double>(offered) : 0;
  }
};

/// A cluster that starts `mu` requests per second, first come first served, whenever one
/// waits, offered `lambda` requests per second at even spacing, for `dur` from `t`
/// (advanced), on 1 ms ticks.
outcome run(adaptive_admission& a, int64_t& t, int64_t dur, double lambda, double mu) {
  outcome o;
  double service = 0;
  const int64_t begin = t;
  for (const int64_t end = t + dur; t < end; t += ms) {
    if (a.waiting() > 0) {
      service += mu / 1000;
      while (service >= 1 - 1e-9 && a.waiting() > 0) {
        a.started(t);
        service -= 1;
      }
    } else {
      service = 0;
    }
    // Arrivals due by the end of this tick, counted exactly (no drift from summing).
    const auto due = static_cast<uint64_t>(
        std::floor(static_cast<double>((t - begin) / ms + 1) * lambda / 1000 + 1e-9));
    while (o.offered < due) {
      ++o.offered;
      auto v = a.decide(t);
      if (v.admit) {
        a.admitted(t);
        ++o.admitted;
        if (v.estimated_wait_ns >= 0) o.estimates_ns.push_back(v.estimated_wait_ns);
      } else {
        ++o.rejected;
        o.retry_after_ns.push_back(v.retry_after_ns);
      }
    }
    o.max_waiting = std::max(o.max_waiting, a.waiting());
  }
  return o;
}

/// No floor (min_waiting 0), so that the estimate alone decides.
adaptive_admission_config config(int64_t max_queue_ns, uint32_t min_waiting = 0) {
  adaptive_admission_config c;
  c.max_queue_ns = max_queue_ns;
  c.window_ns = 2 * s;
  c.min_waiting = min_waiting;
  return c;
}

}  // namespace

TEST_CASE("admission: the defaults are valid", "[admission_policy]") {
  CHECK_FALSE(check(adaptive_admission_config{}));
}

TEST_CASE("admission: steady load under capacity is always admitted", "[admission_policy]") {
  adaptive_admission a(config(200 * ms));
  int64_t t = 1 * s;
  auto o = run(a, t, 20 * s, 80, 100);  // 0.8x capacity
  CHECK(o.offered == 1600);
  CHECK(o.rejected == 0);
  CHECK(o.max_waiting <= 2);
  // The measured rate is the service rate while something waits, not the offered load.
  REQUIRE(a.service_rate());
  CHECK(*a.service_rate() > 90);
}

TEST_CASE("admission: ten times capacity rejects the excess and bounds the wait",
          "[admission_policy]") {
  adaptive_admission a(config(200 * ms));
  int64_t t = 1 * s;
  run(a, t, 5 * s, 80, 100);              // warm: the rate is known
  auto o = run(a, t, 20 * s, 1000, 100);  // 10x
  const double admitted_per_s = static_cast<double>(o.admitted) / 20;
  CHECK(admitted_per_s == Approx(100).epsilon(0.15));
  CHECK(o.rejected_fraction() == Approx(0.9).epsilon(0.05));
  // The queue stays near rate x target (20 requests), never grows with the offered load.
  CHECK(o.max_waiting <= 25);
  for (auto e : o.estimates_ns)
    CHECK(e <= 200 * ms);
}

TEST_CASE("admission: it recovers when the load drops", "[admission_policy]") {
  adaptive_admission a(config(200 * ms));
  int64_t t = 1 * s;
  run(a, t, 3 * s, 80, 100);
  auto over = run(a, t, 5 * s, 1000, 100);
  CHECK(over.rejected > 0);
  // The queue left by the overload drains first (at most the target's worth, 200 ms), then
  // everything is admitted again.
  auto drain = run(a, t, 1 * s, 50, 100);
  CHECK(drain.admitted > 0);
  auto after = run(a, t, 10 * s, 50, 100);
  CHECK(after.offered == 500);
  CHECK(after.rejected == 0);
  CHECK(after.admitted == after.offered);
  CHECK(a.waiting() <= 1);
}

TEST_CASE("admission: the retry hint is the time the excess takes to drain", "[admission_policy]") {
  auto c = config(200 * ms);
  adaptive_admission a(c);
  int64_t t = 1 * s;
  run(a, t, 3 * s, 80, 100);
  auto o = run(a, t, 5 * s, 1000, 100);
  REQUIRE_FALSE(o.retry_after_ns.empty());
  for (auto r : o.retry_after_ns) {
    CHECK(r >= c.retry_after_min_ns);
    CHECK(r <= c.retry_after_max_ns);
  }
  // A deep queue (as after a rate drop): retry after its excess over the target drains.
  adaptive_admission b(config(200 * ms));
  t = 1 * s;
  run(b, t, 3 * s, 80, 100);  // ~100 starts/s measured
  for (int i = 0; i < 1000; ++i)
    b.admitted(t);  // admitted while the fixed limits alone applied
  auto v = b.decide(t);
  CHECK_FALSE(v.admit);
  REQUIRE(v.estimated_wait_ns > 9 * s);  // ~1000 / 100 per s
  CHECK(v.retry_after_ns == v.estimated_wait_ns - 200 * ms);
  // Past the maximum it is clamped.
  for (int i = 0; i < 10000; ++i)
    b.admitted(t);
  CHECK(b.decide(t).retry_after_ns == b.decide(t).retry_after_ns);
  CHECK(b.decide(t).retry_after_ns == config(0).retry_after_max_ns);
}

TEST_CASE("admission: no rate measured yet, or under the floor, admits", "[admission_policy]") {
  adaptive_admission a(config(1 * ms, 4));
  int64_t t = 1 * s;
  // Cold start: no start seen, so nothing is known about capacity.
  for (int i = 0; i < 100; ++i) {
    auto v = a.decide(t);
    CHECK(v.admit);
    CHECK(v.estimated_wait_ns == -1);
    a.admitted(t);
  }
  CHECK_FALSE(a.service_rate());
  // Started and dropped requests stop waiting.
  a.dropped(t);
  a.started(t + 1 * ms);
  CHECK(a.waiting() == 98);
  // Below min_waiting the estimate is reported and the request admitted anyway.
  adaptive_admission b(config(1 * ms, 4));
  t = 1 * s;
  run(b, t, 3 * s, 50, 100);
  REQUIRE(b.service_rate());
  b.admitted(t);
  auto v = b.decide(t);
  CHECK(v.admit);
  CHECK(v.estimated_wait_ns > 1 * ms);
}

TEST_CASE("admission: idle time does not count as slow service", "[admission_policy]") {
  adaptive_admission a(config(200 * ms));
  int64_t t = 1 * s;
  // One request every 100 ms, each started 20 ms after admission: 50 per s of busy time,
  // although only 10 per s of wall time.
  for (int i = 0; i < 15; ++i) {
    a.admitted(t);
    a.started(t + 20 * ms);
    t += 100 * ms;
  }
  REQUIRE(a.service_rate());
  CHECK(*a.service_rate() == Approx(50).epsilon(0.01));
  // After an idle stretch longer than the window the rate is forgotten: cold start again.
  t += 10 * s;
  a.decide(t);
  CHECK_FALSE(a.service_rate());
}

TEST_CASE("admission: off admits everything", "[admission_policy]") {
  adaptive_admission a(config(0));
  int64_t t = 1 * s;
  auto o = run(a, t, 5 * s, 1000, 100);
  CHECK(o.rejected == 0);
}

TEST_CASE("admission: bad settings are refused with the field named", "[admission_policy]") {
  auto bad = [](auto change) {
    adaptive_admission_config c;
    change(c);
    auto e = check(c);
    REQUIRE(e);
    return *e;
  };
  CHECK_THAT(bad([](auto& c) { c.max_queue_ns = -1; }), Catch::Contains("max_queue_ms"));
  CHECK_THAT(bad([](auto& c) { c.max_queue_ns = 2 * 3600 * s; }), Catch::Contains("max_queue_ms"));
  CHECK_THAT(bad([](auto& c) { c.window_ns = 10 * ms; }), Catch::Contains("admission_window_ms"));
  CHECK_THAT(bad([](auto& c) { c.window_ns = 7200 * s; }), Catch::Contains("admission_window_ms"));
  CHECK_THAT(bad([](auto& c) { c.min_waiting = 1u << 21; }),
             Catch::Contains("admission_min_waiting"));
  CHECK_THAT(bad([](auto& c) { c.retry_after_min_ns = 0; }), Catch::Contains("retry-after"));
  CHECK_THAT(bad([](auto& c) { c.retry_after_max_ns = c.retry_after_min_ns - 1; }),
             Catch::Contains("retry-after"));
}
