// The planner's decisions as plain functions: when a worker changes role, which one, and
// the hysteresis that keeps the split from oscillating.
#include <catch2/catch.hpp>

#include <vector>

#include "actors/supervisor/planner_policy.hpp"

using namespace tokenmill;

namespace {

planner_config config() {
  planner_config c;
  c.ttft_ms = 300;
  c.itl_ms = 30;
  c.interval_ms = 1000;
  c.cooldown_ms = 10000;
  c.intervals = 3;
  c.decode_max_batch = 32;
  c.prefill_jobs_per_worker = 4;
  return c;
}

/// Two prefill workers (ids 1, 2) and two decode workers (ids 11, 12).
std::vector<planner_worker> split_2_2() {
  return {{1, role::prefill}, {2, role::prefill}, {11, role::decode}, {12, role::decode}};
}

/// Prompt-heavy load: prefill queues and TTFT over the SLO, decode nearly idle.
planner_signals prompt_heavy(int64_t now_ms, std::vector<planner_worker> w = split_2_2()) {
  planner_signals s;
  s.workers = std::move(w);
  for (auto& x : s.workers) {
    if (x.kind == role::prefill) {
      x.queued = 6;
      x.running = 2;
    } else {
      x.running = 3;
      x.kv_used = 100;
      x.kv_total = 1000;
    }
  }
  s.ttft_ms = 900;  // 3x the SLO
  s.itl_ms = 8;
  s.now_ms = now_ms;
  return s;
}

/// Decode-heavy load: batches full and ITL over the SLO, prefill idle.
planner_signals decode_heavy(int64_t now_ms, std::vector<planner_worker> w = split_2_2()) {
  planner_signals s;
  s.workers = std::move(w);
  for (auto& x : s.workers) {
    if (x.kind == role::decode) {
      x.running = 32;
      x.queued = 10;
      x.kv_used = 800;
      x.kv_total = 1000;
    }
  }
  s.ttft_ms = 40;
  s.itl_ms = 55;
  s.now_ms = now_ms;
  return s;
}

/// Balanced, moderate load: both roles busy, both within their SLOs.
planner_signals steady(int64_t now_ms) {
  planner_signals s;
  s.workers = split_2_2();
  for (auto& x : s.workers) {
    if (x.kind == role::prefill) {
      x.queued = 1;
      x.running = 1;
    } else {
      x.running = 16;
      x.kv_used = 400;
      x.kv_total = 1000;
    }
  }
  s.ttft_ms = 180;
  s.itl_ms = 20;
  s.now_ms = now_ms;
  return s;
}

}  // namespace

TEST_CASE("planner: percentile by nearest rank", "[planner_policy]") {
  CHECK_FALSE(percentile_of({}, 90));
  CHECK(*percentile_of({5}, 90) == 5);
  CHECK(*percentile_of({4, 1, 3, 2, 5, 6, 7, 8, 9, 10}, 90) == 9);
  CHECK(*percentile_of({4, 1, 3, 2, 5, 6, 7, 8, 9, 10}, 100) == 10);
  CHECK(*percentile_of({4, 1, 3, 2}, 50) == 2);
}

TEST_CASE("planner: configuration checks", "[planner_policy]") {
  CHECK(validate(config()).empty());
  auto c = config();
  c.ttft_ms = 0;
  c.itl_ms = 0;
  CHECK_THAT(validate(c), Catch::Contains("neither"));
  c = config();
  c.band = 0.5;
  CHECK_THAT(validate(c), Catch::Contains("band"));
  c = config();
  c.percentile = 0;
  CHECK_THAT(validate(c), Catch::Contains("percentile"));
}

TEST_CASE("planner: pressure combines SLO, work and KV ratios", "[planner_policy]") {
  auto c = config();
  auto w = split_2_2();
  CHECK(role_pressure(c, role::prefill, w, std::nullopt) == 0);
  w[0].queued = 4;
  w[1].running = 4;  // 8 jobs over 2 workers x 4
  CHECK(role_pressure(c, role::prefill, w, std::nullopt) == Approx(1.0));
  CHECK(role_pressure(c, role::prefill, w, 600.0) == Approx(2.0));  // TTFT 2x the SLO
  w[2].kv_used = 950;
  w[2].kv_total = 1000;
  CHECK(role_pressure(c, role::decode, w, 15.0) == Approx(0.95));  // KV nearly full
  // A draining worker counts for neither role: its load and its KV are not the role's.
  w[2].draining = true;
  CHECK(role_pressure(c, role::decode, w, std::nullopt) == 0);
  w[3].draining = true;
  CHECK(role_pressure(c, role::decode, w, 100.0) == 0);  // no available decode worker
}

TEST_CASE("planner: steady load keeps the split", "[planner_policy]") {
  auto c = config();
  planner_memory mem;
  for (int i = 0; i < 50; ++i) {
    auto d = decide_flip(c, steady(i * 1000), mem);
    REQUIRE_FALSE(d.flip);
    CHECK_THAT(d.why, Catch::StartsWith("keep: no role is at its limit"));
    CHECK(d.rule == "calm");
    CHECK(d.evidence.prefill_workers == 2);
    CHECK(d.evidence.decode_workers == 2);
  }
}

TEST_CASE("planner: a phase change flips toward the bottleneck after the streak",
          "[planner_policy]") {
  auto c = config();
  planner_memory mem;
  for (int i = 0; i < 5; ++i)
    REQUIRE_FALSE(decide_flip(c, steady(i * 1000), mem).flip);
  // Now decode-heavy: the first two intervals build the streak, the third flips.
  auto d = decide_flip(c, decode_heavy(5000), mem);
  CHECK_FALSE(d.flip);
  CHECK(d.evidence.streak == 1);
  CHECK_THAT(d.why, Catch::Contains("1 of 3 intervals"));
  CHECK(d.rule == "streak");
  d = decide_flip(c, decode_heavy(6000), mem);
  CHECK_FALSE(d.flip);
  CHECK(d.evidence.streak == 2);
  d = decide_flip(c, decode_heavy(7000), mem);
  REQUIRE(d.flip);
  CHECK(d.from == role::prefill);
  CHECK(d.to == role::decode);
  CHECK((d.worker == 1 || d.worker == 2));
  CHECK(d.evidence.decode_pressure > 1.0);
  CHECK(d.evidence.itl_ms == Approx(55));
  CHECK_THAT(d.why, Catch::Contains("prefill -> decode"));
  CHECK(d.rule == "flip");
  CHECK_THAT(d.why, Catch::Contains("ITL p90 55.0 ms vs 30 ms"));
}

TEST_CASE("planner: prompt-heavy load flips a decode worker to prefill", "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  planner_memory mem;
  auto d = decide_flip(c, prompt_heavy(0), mem);
  REQUIRE(d.flip);
  CHECK(d.from == role::decode);
  CHECK(d.to == role::prefill);
  CHECK((d.worker == 11 || d.worker == 12));
}

TEST_CASE("planner: the worker with the least in flight is flipped", "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  planner_memory mem;
  auto s = decode_heavy(0);
  s.workers[0].queued = 1;  // prefill 1 has a job waiting, prefill 2 has none
  auto d = decide_flip(c, s, mem);
  REQUIRE(d.flip);
  CHECK(d.worker == 2);
}

TEST_CASE("planner: the cooldown holds after a flip", "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  c.cooldown_ms = 10000;
  planner_memory mem;
  std::vector<planner_worker> w = {
      {1, role::prefill}, {2, role::prefill}, {3, role::prefill}, {11, role::decode}};
  REQUIRE(decide_flip(c, decode_heavy(0, w), mem).flip);
  // The flip took effect (worker 3 serves decode now) and decode is still the bottleneck.
  w[2].kind = role::decode;
  for (int64_t t = 1000; t < 10000; t += 1000) {
    auto d = decide_flip(c, decode_heavy(t, w), mem);
    REQUIRE_FALSE(d.flip);
    CHECK_THAT(d.why, Catch::Contains("cooldown 10000 ms"));
    CHECK(d.rule == "cooldown");
  }
  // After the cooldown the next flip may come.
  CHECK(decide_flip(c, decode_heavy(10000, w), mem).flip);
}

TEST_CASE("planner: nothing is decided while a role change is in flight", "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  planner_memory mem;
  auto s = decode_heavy(0);
  s.change_in_flight = true;
  auto d = decide_flip(c, s, mem);
  CHECK_FALSE(d.flip);
  CHECK_THAT(d.why, Catch::Contains("in flight"));
  CHECK(d.rule == "in_flight");
}

TEST_CASE("planner: minimum counts hold", "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  c.cooldown_ms = 0;
  planner_memory mem;
  // One prefill worker left: never flipped, however hot decode is.
  std::vector<planner_worker> w = {{1, role::prefill}, {11, role::decode}, {12, role::decode}};
  auto d = decide_flip(c, decode_heavy(0, w), mem);
  CHECK_FALSE(d.flip);
  CHECK_THAT(d.why, Catch::Contains("prefill has 1 available workers (minimum 1)"));
  CHECK(d.rule == "min_count");
  // A configured minimum of 2 keeps two of three.
  c.min_prefill = 2;
  w = {{1, role::prefill}, {2, role::prefill}, {11, role::decode}};
  d = decide_flip(c, decode_heavy(0, w), mem);
  CHECK_FALSE(d.flip);
  CHECK_THAT(d.why, Catch::Contains("minimum 2"));
  w.push_back({3, role::prefill});
  CHECK(decide_flip(c, decode_heavy(1000, w), mem).flip);
}

TEST_CASE("planner: a draining worker is not counted as available", "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  planner_memory mem;
  auto w = split_2_2();
  w[1].draining = true;  // prefill 2 is being drained: prefill has one available worker
  auto d = decide_flip(c, decode_heavy(0, w), mem);
  CHECK_FALSE(d.flip);
  CHECK(d.evidence.prefill_workers == 1);
  CHECK_THAT(d.why, Catch::Contains("minimum"));
  // Nor is a draining worker ever the one picked.
  w = {{1, role::prefill}, {2, role::prefill}, {3, role::prefill}, {11, role::decode}};
  w[0].draining = true;
  w[2].queued = 2;  // busier than 2
  d = decide_flip(c, decode_heavy(0, w), mem);
  REQUIRE(d.flip);
  CHECK(d.worker == 2);
}

TEST_CASE("planner: a flip that would make the donor the bottleneck is not made",
          "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  planner_memory mem;
  auto s = decode_heavy(0);
  // Prefill is busy too: 6 jobs on 2 workers (pressure 0.75); with one worker it would be
  // 1.5, past its limit.
  s.workers[0].queued = 3;
  s.workers[1].queued = 3;
  auto d = decide_flip(c, s, mem);
  CHECK_FALSE(d.flip);
  CHECK_THAT(d.why, Catch::Contains("would reach pressure 1.50"));
  CHECK(d.rule == "donor_limit");
}

TEST_CASE("planner: both roles hot within the band keeps the split", "[planner_policy]") {
  auto c = config();
  c.intervals = 1;
  planner_memory mem;
  auto s = decode_heavy(0);  // decode pressure 1.83 (ITL 55 vs 30)
  s.ttft_ms = 400;           // prefill pressure 1.33: within the band of 1.5x
  auto d = decide_flip(c, s, mem);
  CHECK_FALSE(d.flip);
  CHECK_THAT(d.why, Catch::Contains("is not 1.50x"));
  CHECK(d.rule == "within_band");
}

TEST_CASE("planner: noisy alternating signals do not oscillate", "[planner_policy]") {
  auto c = config();
  c.cooldown_ms = 0;  // only the streak stands between noise and a flip
  planner_memory mem;
  int flips = 0;
  for (int i = 0; i < 100; ++i) {
    auto s = i % 2 == 0 ? prompt_heavy(i * 1000) : decode_heavy(i * 1000);
    flips += decide_flip(c, s, mem).flip;
  }
  CHECK(flips == 0);
  // Two-in-a-row bursts of each, still shorter than the 3-interval streak.
  for (int i = 0; i < 100; ++i) {
    auto s = (i / 2) % 2 == 0 ? prompt_heavy(i * 1000) : decode_heavy(i * 1000);
    flips += decide_flip(c, s, mem).flip;
  }
  CHECK(flips == 0);
  // A calm interval between hot ones also resets the streak.
  for (int i = 0; i < 100; ++i) {
    auto s = i % 3 == 0 ? steady(i * 1000) : decode_heavy(i * 1000);
    flips += decide_flip(c, s, mem).flip;
  }
  CHECK(flips == 0);
}

TEST_CASE("planner: sustained phases flip toward each bottleneck, one flip per cooldown",
          "[planner_policy]") {
  auto c = config();
  c.cooldown_ms = 5000;
  planner_memory mem;
  auto w = split_2_2();
  std::vector<planner_decision> flips;
  auto apply = [&](const planner_decision& d) {
    for (auto& x : w)
      if (x.id == d.worker) x.kind = d.to;
    flips.push_back(d);
  };
  int64_t t = 0;
  // Decode-heavy for 20 intervals: one flip to 1 prefill / 3 decode, then min counts hold.
  for (int i = 0; i < 20; ++i, t += 1000) {
    auto d = decide_flip(c, decode_heavy(t, w), mem);
    if (d.flip) apply(d);
  }
  REQUIRE(flips.size() == 1);
  CHECK(flips[0].to == role::decode);
  // Prompt-heavy for 20 intervals: decode gives workers back, one per cooldown, while
  // prefill stays the bottleneck and decode can spare them.
  for (int i = 0; i < 20; ++i, t += 1000) {
    auto d = decide_flip(c, prompt_heavy(t, w), mem);
    if (d.flip) apply(d);
  }
  REQUIRE(flips.size() >= 2);
  for (size_t i = 1; i < flips.size(); ++i)
    CHECK(flips[i].to == role::prefill);
}

namespace {

planner_worker decode_worker(worker_id id, uint32_t running, uint32_t queued = 0) {
  planner_worker w{id, role::decode};
  w.running = running;
  w.queued = queued;
  return w;
}

uint32_t moved_from(const std::vector<rebalance_move>& m, worker_id id) {
  uint32_t n = 0;
  for (const auto& x : m)
    if (x.from == id) n += x.count;
  return n;
}

}  // namespace

TEST_CASE("rebalance: a new decode worker takes the excess over the fair share",
          "[planner_policy]") {
  // 30 + 20 + 0 (the new one, id 13) = 50 over 3 workers: share 17. Worker 11 gives 13,
  // worker 12 gives 3; the target ends at 16 (each donor keeps at least the share).
  std::vector<planner_worker> w = {
      decode_worker(11, 30), decode_worker(12, 20), decode_worker(13, 0), {1, role::prefill}};
  w[3].queued = 40;  // prefill load plays no part
  auto m = plan_rebalance(w, 13, 64);
  REQUIRE(m.size() == 2);
  CHECK(m[0].from == 11);  // the busiest first
  CHECK(m[0].count == 13);
  CHECK(m[1].from == 12);
  CHECK(m[1].count == 3);
}

TEST_CASE("rebalance: queued sequences count, max_moves caps, 0 turns it off", "[planner_policy]") {
  std::vector<planner_worker> w = {decode_worker(11, 8, 12), decode_worker(12, 0)};
  auto all = plan_rebalance(w, 12, 64);  // 20 over 2: share 10
  REQUIRE(all.size() == 1);
  CHECK(all[0].count == 10);
  CHECK(moved_from(plan_rebalance(w, 12, 4), 11) == 4);
  CHECK(plan_rebalance(w, 12, 0).empty());
}

TEST_CASE("rebalance: nothing moves when loads are even or the target is not available",
          "[planner_policy]") {
  SECTION("even") {
    std::vector<planner_worker> w = {decode_worker(11, 5), decode_worker(12, 5),
                                     decode_worker(13, 4)};
    CHECK(plan_rebalance(w, 13, 64).empty());  // share 5: one sequence is not worth a move
  }
  SECTION("target draining, down, unknown or not decode") {
    std::vector<planner_worker> w = {decode_worker(11, 30), decode_worker(12, 0)};
    w[1].draining = true;
    CHECK(plan_rebalance(w, 12, 64).empty());
    w[1].draining = false;
    w[1].up = false;
    CHECK(plan_rebalance(w, 12, 64).empty());
    CHECK(plan_rebalance(w, 99, 64).empty());
    w[1] = {12, role::prefill};
    CHECK(plan_rebalance(w, 12, 64).empty());
  }
  SECTION("a draining donor is not asked (its drain moves its sequences anyway)") {
    std::vector<planner_worker> w = {decode_worker(11, 30), decode_worker(12, 30),
                                     decode_worker(13, 0)};
    w[0].draining = true;  // share over the available two: 15
    auto m = plan_rebalance(w, 13, 64);
    REQUIRE(m.size() == 1);
    CHECK(m[0].from == 12);
    CHECK(m[0].count == 15);
  }
}
