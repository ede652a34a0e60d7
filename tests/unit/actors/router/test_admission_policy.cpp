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

// ---- The TTFT objective (ttft_slo_ns): the unloaded start time plus the queue wait.

namespace {

/// A first-come-first-served cluster like run()'s, whose requests also take `floor` from
/// admission to start even with nothing in front (prefill, KV move, first step), and whose
/// service rate `mu_at(t)` may change over time. Starts report their admission time and
/// how many were in front, as the router does. One per policy: it keeps the queue.
struct fifo_cluster {
  struct waiter {
    int64_t admitted_ns;
    uint32_t ahead;
  };
  std::vector<waiter> queue;

  template <class Mu>
  outcome run(adaptive_admission& a, int64_t& t, int64_t dur, double lambda, Mu mu_at,
              int64_t floor, std::vector<int64_t>* start_latencies = nullptr);
};

template <class Mu>
outcome fifo_cluster::run(adaptive_admission& a, int64_t& t, int64_t dur, double lambda, Mu mu_at,
                          int64_t floor, std::vector<int64_t>* start_latencies) {
  outcome o;
  double service = 0;
  const int64_t begin = t;
  for (const int64_t end = t + dur; t < end; t += ms) {
    if (!queue.empty()) {
      service = std::min(service + mu_at(t) / 1000, 1.0 + mu_at(t) / 1000);
      while (service >= 1 - 1e-9 && !queue.empty() && t - queue.front().admitted_ns >= floor) {
        a.started(t, queue.front().admitted_ns, queue.front().ahead);
        if (start_latencies) start_latencies->push_back(t - queue.front().admitted_ns);
        queue.erase(queue.begin());
        service -= 1;
      }
    } else {
      service = 0;
    }
    const auto due = static_cast<uint64_t>(
        std::floor(static_cast<double>((t - begin) / ms + 1) * lambda / 1000 + 1e-9));
    while (o.offered < due) {
      ++o.offered;
      auto v = a.decide(t);
      if (v.admit) {
        queue.push_back({t, a.admitted(t)});
        ++o.admitted;
        if (v.estimated_wait_ns >= 0) o.estimates_ns.push_back(v.estimated_wait_ns);
      } else {
        ++o.rejected;
        o.retry_after_ns.push_back(v.retry_after_ns);
        CHECK(v.by_ttft_slo);
      }
    }
    o.max_waiting = std::max(o.max_waiting, a.waiting());
  }
  return o;
}

/// Only the TTFT objective applies (max_queue off), no floor.
adaptive_admission_config slo_config(int64_t slo_ns) {
  auto c = config(0);
  c.ttft_slo_ns = slo_ns;
  return c;
}

auto constant(double mu) {
  return [mu](int64_t) { return mu; };
}

}  // namespace

TEST_CASE("admission: with a TTFT objective steady load is always admitted", "[admission_policy]") {
  adaptive_admission a(slo_config(250 * ms));
  fifo_cluster ca;
  int64_t t = 1 * s;
  std::vector<int64_t> lat;
  auto o = ca.run(a, t, 20 * s, 80, constant(100), 50 * ms, &lat);  // 0.8x capacity
  CHECK(o.offered == 1600);
  CHECK(o.rejected == 0);
  // Unqueued requests start after the floor: that is the unloaded start time.
  REQUIRE(a.unloaded_start_ns());
  CHECK(*a.unloaded_start_ns() >= 50 * ms);
  CHECK(*a.unloaded_start_ns() <= 60 * ms);
}

TEST_CASE("admission: a TTFT objective bounds the start time at ten times capacity",
          "[admission_policy]") {
  const auto c = slo_config(250 * ms);
  adaptive_admission a(c);
  fifo_cluster ca;
  int64_t t = 1 * s;
  ca.run(a, t, 5 * s, 80, constant(100), 50 * ms);  // warm: rate and unloaded start known
  const int64_t unloaded = *a.unloaded_start_ns();
  std::vector<int64_t> lat;
  auto o = ca.run(a, t, 20 * s, 1000, constant(100), 50 * ms, &lat);  // 10x
  CHECK(static_cast<double>(o.admitted) / 20 == Approx(100).epsilon(0.15));
  CHECK(o.rejected_fraction() == Approx(0.9).epsilon(0.05));
  // Admitted only while the unloaded start plus the wait fits the objective: the queue
  // holds about (250 - 50) ms x 100/s = 20 requests, not a fixed floor or the max_queue.
  for (auto e : o.estimates_ns)
    CHECK(unloaded + e <= 250 * ms);
  CHECK(o.max_waiting <= 24);
  // What the requests saw: their start times stay near the objective, at any load.
  std::sort(lat.begin(), lat.end());
  REQUIRE(lat.size() > 100);
  CHECK(lat[lat.size() * 99 / 100] <= 300 * ms);
  // The unloaded start time is not inflated by the queue: no request started unqueued.
  CHECK(*a.unloaded_start_ns() == unloaded);
}

TEST_CASE("admission: a TTFT objective's retry hint is the time the excess takes to drain",
          "[admission_policy]") {
  const auto c = slo_config(250 * ms);
  adaptive_admission a(c);
  fifo_cluster ca;
  int64_t t = 1 * s;
  ca.run(a, t, 3 * s, 80, constant(100), 50 * ms);
  const int64_t unloaded = *a.unloaded_start_ns();
  for (int i = 0; i < 300; ++i)
    a.admitted(t);  // a deep queue, admitted while the fixed limits alone applied
  auto v = a.decide(t);
  CHECK_FALSE(v.admit);
  CHECK(v.by_ttft_slo);
  REQUIRE(v.estimated_wait_ns > 2 * s);  // ~300 / 100 per s
  CHECK(v.retry_after_ns == unloaded + v.estimated_wait_ns - 250 * ms);
  // With both targets set the one exceeded by more decides, and names itself.
  auto both = c;
  both.max_queue_ns = 100 * ms;
  adaptive_admission b(both);
  fifo_cluster cb;
  t = 1 * s;
  cb.run(b, t, 3 * s, 80, constant(100), 50 * ms);
  for (int i = 0; i < 300; ++i)
    b.admitted(t);
  auto w = b.decide(t);
  CHECK_FALSE(w.admit);
  CHECK_FALSE(w.by_ttft_slo);
  CHECK(w.retry_after_ns == w.estimated_wait_ns - 100 * ms);
}

TEST_CASE("admission: with a TTFT objective it recovers when the load drops",
          "[admission_policy]") {
  adaptive_admission a(slo_config(250 * ms));
  fifo_cluster ca;
  int64_t t = 1 * s;
  ca.run(a, t, 3 * s, 80, constant(100), 50 * ms);
  auto over = ca.run(a, t, 5 * s, 1000, constant(100), 50 * ms);
  CHECK(over.rejected > 0);
  ca.run(a, t, 1 * s, 50, constant(100), 50 * ms);  // the queue the overload left drains
  auto after = ca.run(a, t, 10 * s, 50, constant(100), 50 * ms);
  CHECK(after.offered == 500);
  CHECK(after.rejected == 0);
  REQUIRE(a.unloaded_start_ns());
  CHECK(*a.unloaded_start_ns() <= 60 * ms);
}

TEST_CASE("admission: a noisy service rate does not make it flap", "[admission_policy]") {
  // The cluster alternates between 60 and 140 starts/s every 250 ms (100 on average).
  auto noisy = [](int64_t now) { return (now / (250 * ms)) % 2 == 0 ? 60.0 : 140.0; };
  adaptive_admission a(slo_config(300 * ms));
  fifo_cluster ca;
  int64_t t = 1 * s;
  // Under capacity nothing is refused, although the rate swings by +-40%.
  auto under = ca.run(a, t, 20 * s, 60, noisy, 50 * ms);
  CHECK(under.rejected == 0);
  // At three times capacity every second refuses about the same share (1 - 100/300),
  // not all-or-nothing in turns.
  for (int sec = 0; sec < 10; ++sec) {
    auto o = ca.run(a, t, 1 * s, 300, noisy, 50 * ms);
    if (sec == 0) continue;  // the queue fills during the first second
    CHECK(o.rejected_fraction() > 0.5);
    CHECK(o.rejected_fraction() < 0.8);
  }
}

TEST_CASE("admission: the unloaded start time comes from unqueued requests only",
          "[admission_policy]") {
  adaptive_admission a(slo_config(250 * ms));
  int64_t t = 1 * s;
  CHECK_FALSE(a.unloaded_start_ns());
  // A request with nothing in front: one sample, taken as it is.
  CHECK(a.admitted(t) == 0);
  a.started(t + 40 * ms, t, 0);
  REQUIRE(a.unloaded_start_ns());
  CHECK(*a.unloaded_start_ns() == 40 * ms);
  t += 100 * ms;
  // Queued requests (something in front) say nothing about the unloaded time.
  CHECK(a.admitted(t) == 0);
  CHECK(a.admitted(t) == 1);
  a.started(t + 40 * ms, t, 0);
  a.started(t + 900 * ms, t, 1);
  CHECK(*a.unloaded_start_ns() == 40 * ms);
  // One slow unqueued start moves the average by an eighth of its excess.
  t += 1 * s;
  a.admitted(t);
  a.started(t + 120 * ms, t, 0);
  CHECK(*a.unloaded_start_ns() == 50 * ms);
  // Starts without an admission time (as before) are services, not samples.
  a.admitted(t);
  a.started(t + 1 * ms);
  CHECK(*a.unloaded_start_ns() == 50 * ms);
}

TEST_CASE("admission: a bad TTFT objective is refused with the field named", "[admission_policy]") {
  adaptive_admission_config c;
  c.ttft_slo_ns = -1;
  REQUIRE(check(c));
  CHECK_THAT(*check(c), Catch::Contains("ttft_slo_ms"));
  c.ttft_slo_ns = 2 * 3600 * s;
  REQUIRE(check(c));
  CHECK_THAT(*check(c), Catch::Contains("ttft_slo_ms"));
  c.ttft_slo_ns = 500 * ms;
  CHECK_FALSE(check(c));
}
