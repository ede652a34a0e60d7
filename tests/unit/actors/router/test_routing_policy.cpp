#include <catch2/catch.hpp>

#include <limits>
#include <vector>

#include "actors/router/routing_policy.hpp"

using namespace tokenmill;

TEST_CASE("admit bounds in-flight requests", "[routing_policy]") {
  admission_limits lim;
  lim.max_inflight = 3;
  lim.max_queued_prompt_tokens = 1000;
  CHECK(admit(0, 0, 10, lim) == admission::accept);
  CHECK(admit(2, 0, 10, lim) == admission::accept);
  CHECK(admit(3, 0, 10, lim) == admission::overloaded);
  CHECK(admit(4, 0, 10, lim) == admission::overloaded);
  lim.max_inflight = 0;
  CHECK(admit(0, 0, 1, lim) == admission::overloaded);
}

TEST_CASE("admit bounds queued prompt tokens", "[routing_policy]") {
  admission_limits lim;
  lim.max_inflight = 100;
  lim.max_queued_prompt_tokens = 1000;
  CHECK(admit(1, 500, 500, lim) == admission::accept);  // exactly at the limit
  CHECK(admit(1, 500, 501, lim) == admission::overloaded);
  CHECK(admit(1, 1000, 1, lim) == admission::overloaded);
  CHECK(admit(1, 1, 999, lim) == admission::accept);
  // An idle router admits even a prompt larger than the whole budget.
  CHECK(admit(0, 0, 5000, lim) == admission::accept);
  CHECK(admit(5, 0, 5000, lim) == admission::accept);
  // No 32-bit overflow in the sum.
  lim.max_queued_prompt_tokens = uint64_t{1} << 40;
  CHECK(admit(1, (uint64_t{1} << 40) - 10, 0xFFFFFFFFu, lim) == admission::overloaded);
  CHECK(admit(1, 1, 0xFFFFFFFFu, lim) == admission::accept);
}

TEST_CASE("default admission limits", "[routing_policy]") {
  admission_limits lim;
  CHECK(lim.max_inflight == 1024);
  CHECK(lim.max_queued_prompt_tokens == (uint64_t{1} << 22));
  CHECK(admit(1023, 0, 100, lim) == admission::accept);
  CHECK(admit(1024, 0, 100, lim) == admission::overloaded);
}

namespace {

/// A speed of `tps` tokens per second without profile points.
prefill_speed rate(double tps) {
  prefill_speed s;
  s.tokens_per_s = tps;
  return s;
}

/// The speed of every candidate unless a test says otherwise.
const prefill_speed k1000 = rate(1000);

route_candidate decode(worker_id id, uint32_t active, uint32_t overlap = 0, uint64_t queued = 0,
                       bool draining = false) {
  return {id, overlap, queued, active, draining, &k1000};
}

route_candidate prefill(worker_id id, uint64_t queued, uint32_t overlap = 0,
                        bool draining = false) {
  return {id, overlap, queued, 0, draining, &k1000};
}

/// 1 ms of load per active request, no KV transfer term (kv_bytes_per_block 0).
cost_model model() {
  cost_model m;
  m.load_s_per_request = 0.001;
  return m;
}

}  // namespace

TEST_CASE("prefill time: a configured rate, or the profile's curve", "[routing_policy]") {
  auto r = rate(1000);
  CHECK(uncached_prefill_seconds(r, 1000, 0) == Approx(1.0));
  CHECK(uncached_prefill_seconds(r, 1000, 600) == Approx(0.4));
  CHECK(uncached_prefill_seconds(r, 100, 100) == 0);
  CHECK(uncached_prefill_seconds(r, 100, 5000) == 0);  // cache longer than the prompt
  CHECK(uncached_prefill_seconds(rate(0), 100, 0) == 0);
  // A profile: attention makes later tokens dearer. 512 tokens 0.1 s, 1024 0.25 s, 2048 0.7 s.
  prefill_speed p;
  p.points = {{512, 0.1}, {1024, 0.25}, {2048, 0.7}};
  CHECK(uncached_prefill_seconds(p, 512, 0) == Approx(0.1));
  CHECK(uncached_prefill_seconds(p, 256, 0) == Approx(0.05));      // proportional below
  CHECK(uncached_prefill_seconds(p, 768, 0) == Approx(0.175));     // linear between
  CHECK(uncached_prefill_seconds(p, 3072, 0) == Approx(1.15));     // last slope past the end
  CHECK(uncached_prefill_seconds(p, 2048, 1024) == Approx(0.45));  // the tail costs more...
  CHECK(uncached_prefill_seconds(p, 1024, 0) < uncached_prefill_seconds(p, 2048, 1024));
  // A single point: its average rate everywhere.
  prefill_speed one;
  one.points = {{100, 0.5}};
  CHECK(uncached_prefill_seconds(one, 300, 100) == Approx(1.0));
}

TEST_CASE("cost model: the cached worker wins until its queue outweighs the saving",
          "[routing_policy]") {
  // 160 tokens = 10 blocks of 16; remote prefill; prefill worker 2 holds 8 blocks.
  auto m = model();
  std::vector<route_candidate> d{decode(1, 0)};
  std::vector<route_candidate> p{prefill(1, 0), prefill(2, 0, 8)};
  // 1: 160 tokens = 0.16 s; 2: 32 tokens = 0.032 s.
  auto plan = plan_route(d, p, 160, 16, 0, m);
  REQUIRE(plan.prefill == 1u);
  CHECK(plan.prefill_scores[1].cached_tokens == 128);
  CHECK(plan.prefill_scores[1].prefill_s == Approx(0.032));
  CHECK(plan.prefill_scores[0].prefill_s == Approx(0.16));
  // Its queue grows: 127 queued tokens (0.127 s) still leave it cheaper...
  p[1].queued_tokens = 127;
  CHECK(plan_route(d, p, 160, 16, 0, m).prefill == 1u);
  // ...129 do not (0.161 s > 0.16 s).
  p[1].queued_tokens = 129;
  plan = plan_route(d, p, 160, 16, 0, m);
  CHECK(plan.prefill == 0u);
  CHECK(plan.prefill_scores[1].queue_s == Approx(0.129));
  // A heavier queue weight tips it earlier.
  p[1].queued_tokens = 100;
  CHECK(plan_route(d, p, 160, 16, 0, m).prefill == 1u);
  m.weights.queue = 2;
  CHECK(plan_route(d, p, 160, 16, 0, m).prefill == 0u);
}

TEST_CASE("cost model: a decode worker's prefix and load, local prefill against remote",
          "[routing_policy]") {
  auto m = model();  // 1000 tokens/s, 1 ms per active request
  std::vector<route_candidate> p{prefill(50, 0)};
  SECTION("without cache, the least loaded decode worker") {
    std::vector<route_candidate> d{decode(1, 5), decode(2, 2), decode(3, 7)};
    auto plan = plan_route(d, p, 160, 16, 0, m);
    CHECK(plan.decode == 1u);
    CHECK(plan.prefill == 0u);
    CHECK(plan.decode_scores[1].load_s == Approx(0.002));
    CHECK(plan.cost == Approx(0.002 + 0.16));
  }
  SECTION("local prefill: the decode worker holding the prefix, until its load outweighs it") {
    // Threshold 64: decode 2 holds 8 of 10 blocks, so 32 uncached tokens stay local there
    // (0.032 s); decode 1 has nothing cached and goes remote (0.16 s).
    std::vector<route_candidate> d{decode(1, 0), decode(2, 0, 8)};
    auto plan = plan_route(d, p, 160, 16, 64, m);
    CHECK(plan.decode == 1u);
    CHECK_FALSE(plan.prefill.has_value());
    CHECK(plan.decode_scores[1].local);
    CHECK_FALSE(plan.decode_scores[0].local);
    // 127 active requests (0.127 s) still leave it cheaper, 129 do not.
    d[1].active = 127;
    CHECK(plan_route(d, p, 160, 16, 64, m).decode == 1u);
    d[1].active = 129;
    plan = plan_route(d, p, 160, 16, 64, m);
    CHECK(plan.decode == 0u);
    CHECK(plan.prefill == 0u);
    // Its queue of local prefills counts too.
    d[1].active = 0;
    d[1].queued_tokens = 200;
    CHECK(plan_route(d, p, 160, 16, 64, m).decode == 0u);
  }
  SECTION("KV moved: a remote prefill prefers the decode worker that holds part of the prompt") {
    m.kv_bytes_per_block = 1 << 20;
    m.kv_bytes_per_s = 1e9;  // ~1 ms per block
    std::vector<route_candidate> d{decode(1, 0), decode(2, 0, 6)};
    auto plan = plan_route(d, p, 160, 16, 0, m);
    CHECK(plan.decode == 1u);
    CHECK(plan.decode_scores[0].transfer_s == Approx(10 * 1048576 / 1e9));
    CHECK(plan.decode_scores[1].transfer_s == Approx(4 * 1048576 / 1e9));
    // Unless its load outweighs the 6 blocks it saves.
    d[1].active = 7;
    CHECK(plan_route(d, p, 160, 16, 0, m).decode == 0u);
    m.weights.transfer = 0;
    d[1].active = 0;
    CHECK(plan_route(d, p, 160, 16, 0, m).decode == 1u);  // a tie: the larger overlap
  }
  SECTION("no prefill worker that takes work: every decode worker prefills locally") {
    std::vector<route_candidate> none{prefill(50, 0, 0, true)};
    std::vector<route_candidate> d{decode(1, 3), decode(2, 1)};
    auto plan = plan_route(d, none, 160, 16, 0, m);
    CHECK(plan.decode == 1u);
    CHECK_FALSE(plan.prefill.has_value());
    CHECK(plan.decode_scores[1].local);
    CHECK_FALSE(plan.prefill_scores[0].eligible);
    CHECK(plan_route(d, {}, 160, 16, 0, m).decode == 1u);
  }
}

TEST_CASE("cost model: ties go to the larger overlap, then the lower id, in any order",
          "[routing_policy]") {
  auto m = model();
  m.weights.prefill = 0;  // overlap saves nothing: every prefill worker costs its queue
  std::vector<route_candidate> p{prefill(9, 100, 1), prefill(4, 100, 3), prefill(6, 100, 3)};
  CHECK(plan_route(std::vector<route_candidate>{decode(1, 0)}, p, 160, 16, 0, m).prefill == 1u);
  std::vector<route_candidate> q{prefill(6, 100, 3), prefill(9, 100, 1), prefill(4, 100, 3)};
  CHECK(plan_route(std::vector<route_candidate>{decode(1, 0)}, q, 160, 16, 0, m).prefill == 2u);
  std::vector<route_candidate> d{decode(7, 1), decode(3, 1), decode(5, 1)};
  CHECK(plan_route(d, p, 160, 16, 0, m).decode == 1u);
  std::vector<route_candidate> rev{decode(5, 1), decode(3, 1), decode(7, 1)};
  CHECK(plan_route(rev, p, 160, 16, 0, m).decode == 1u);
}

TEST_CASE("cost model: missing profile, overlap past the prompt, zero block size",
          "[routing_policy]") {
  auto m = model();
  // A worker without a speed uses the default (configured) rate.
  prefill_speed fast = rate(10000);
  std::vector<route_candidate> p{prefill(1, 0), prefill(2, 0)};
  p[0].speed = nullptr;
  p[1].speed = &fast;
  auto plan = plan_route(std::vector<route_candidate>{decode(1, 0)}, p, 1000, 16, 0, m);
  CHECK(plan.prefill == 1u);
  CHECK(plan.prefill_scores[0].prefill_s == Approx(1000.0 / prefill_speed{}.tokens_per_s));
  CHECK(plan.prefill_scores[1].prefill_s == Approx(0.1));
  // The block with the prompt's last token is always computed, however large the overlap.
  std::vector<route_candidate> big{prefill(1, 0, 0xFFFFFFFFu)};
  plan = plan_route(std::vector<route_candidate>{decode(1, 0)}, big, 160, 16, 0, m);
  CHECK(plan.prefill_scores[0].cached_tokens == 144);
  CHECK(plan.prefill_scores[0].prefill_s > 0);
  // Block size 0: overlap is worth nothing, nothing is moved.
  plan = plan_route(std::vector<route_candidate>{decode(1, 0, 5)}, big, 160, 0, 0, m);
  CHECK(plan.prefill_scores[0].cached_tokens == 0);
  CHECK(plan.decode_scores[0].transfer_s == 0);
  // Nothing to pick.
  CHECK_FALSE(plan_route({}, p, 160, 16, 0, m).decode.has_value());
}

TEST_CASE("prefill_locally: conditional disaggregation", "[routing_policy]") {
  // Short uncached part: stay local.
  CHECK(prefill_locally(100, 0, 128, true));
  CHECK_FALSE(prefill_locally(128, 0, 128, true));  // not shorter than the threshold
  CHECK_FALSE(prefill_locally(1000, 0, 128, true));
  // Cached tokens do not count.
  CHECK(prefill_locally(1000, 900, 128, true));
  CHECK_FALSE(prefill_locally(1000, 872, 128, true));
  CHECK(prefill_locally(1000, 873, 128, true));
  // Cache longer than the prompt (whole prompt cached) is not an underflow.
  CHECK(prefill_locally(100, 5000, 128, true));
  // Threshold 0 disables local prefill, even for a fully cached prompt.
  CHECK_FALSE(prefill_locally(1, 0, 0, true));
  CHECK_FALSE(prefill_locally(100, 100, 0, true));
  // No prefill worker at all: always local, whatever the threshold.
  CHECK(prefill_locally(100000, 0, 0, false));
  CHECK(prefill_locally(100000, 0, 128, false));
  CHECK(prefill_locally(0, 0, 0, false));
}

TEST_CASE("the kv-store is asked only when its answer can change the route", "[routing_policy]") {
  // kv-store known, prompt >= one block, and a choice: several decode or prefill workers.
  CHECK(overlap_matters(true, 16, 16, 2, 0, 0));
  CHECK(overlap_matters(true, 16, 16, 1, 2, 0));
  // One decode, one prefill worker: only local prefill (threshold > 0) makes a choice.
  CHECK_FALSE(overlap_matters(true, 64, 16, 1, 1, 0));
  CHECK(overlap_matters(true, 64, 16, 1, 1, 128));
  CHECK_FALSE(overlap_matters(true, 64, 16, 1, 0, 128));
  // No kv-store, or no full block to look up.
  CHECK_FALSE(overlap_matters(false, 64, 16, 4, 4, 128));
  CHECK_FALSE(overlap_matters(true, 15, 16, 4, 4, 128));
}

TEST_CASE("cost model: draining workers are scored as not eligible and never chosen",
          "[routing_policy]") {
  auto m = model();
  // The idlest decode worker, with the largest overlap, is draining.
  std::vector<route_candidate> d{decode(1, 0, 9, 0, true), decode(2, 3), decode(3, 2)};
  // The cheapest prefill worker (empty queue, full overlap) is draining.
  std::vector<route_candidate> p{prefill(1, 0, 10, true), prefill(2, 400), prefill(3, 300)};
  auto plan = plan_route(d, p, 160, 16, 0, m);
  CHECK(plan.decode == 2u);
  CHECK(plan.prefill == 2u);
  CHECK_FALSE(plan.decode_scores[0].eligible);
  CHECK_FALSE(plan.prefill_scores[0].eligible);
  // Draining at the front of the list does not become the default choice.
  std::vector<route_candidate> front{decode(1, 0, 0, 0, true), decode(2, 7)};
  CHECK(plan_route(front, p, 160, 16, 0, m).decode == 1u);
  // Every decode worker draining: nothing to pick (the router says no decode worker is up).
  std::vector<route_candidate> all{decode(1, 0, 0, 0, true), decode(2, 0, 0, 0, true)};
  CHECK_FALSE(plan_route(all, p, 160, 16, 0, m).decode.has_value());
}

TEST_CASE("cost model: blocks in a second tier cost their onboarding, far less than compute",
          "[routing_policy]") {
  // 160 tokens = 10 blocks of 16, 1 MB per block; remote prefill.
  auto m = model();
  m.kv_bytes_per_block = 1'000'000;
  m.host_onboard_bytes_per_s = 1e9;  // 1 ms per block
  m.disk_onboard_bytes_per_s = 1e8;  // 10 ms per block
  std::vector<route_candidate> d{decode(1, 0)};
  // Worker 1 holds 8 blocks in its pool, worker 2 the same 8 with 6 only on its host tier.
  std::vector<route_candidate> p{prefill(1, 0, 8), prefill(2, 0, 8)};
  p[1].host_blocks = 6;
  auto plan = plan_route(d, p, 160, 16, 0, m);
  REQUIRE(plan.prefill == 0u);  // same compute, no copy
  CHECK(plan.prefill_scores[0].onboard_s == 0);
  CHECK(plan.prefill_scores[1].onboard_s == Approx(0.006));
  CHECK(plan.prefill_scores[1].total == Approx(0.032 + 0.006));
  // Against a worker with nothing cached (0.16 s), the tiered one still wins...
  p[0].overlap_blocks = 0;
  CHECK(plan_route(d, p, 160, 16, 0, m).prefill == 1u);
  // ...and on disk at 10 ms per block too: 0.032 + 0.06 s < 0.16 s.
  p[1].host_blocks = 0;
  p[1].disk_blocks = 6;
  plan = plan_route(d, p, 160, 16, 0, m);
  CHECK(plan.prefill_scores[1].onboard_s == Approx(0.06));
  CHECK(plan.prefill == 1u);
  // With all 8 on a disk 10x slower again (100 ms per block), computing is cheaper.
  p[1].disk_blocks = 8;
  m.disk_onboard_bytes_per_s = 1e7;
  plan = plan_route(d, p, 160, 16, 0, m);
  CHECK(plan.prefill_scores[1].onboard_s == Approx(0.8));
  CHECK(plan.prefill == 0u);
  // The transfer weight scales onboarding; 0 ignores it.
  m.weights.transfer = 0;
  CHECK(plan_route(d, p, 160, 16, 0, m).prefill == 1u);
}

TEST_CASE("cost model: onboarding counts only reused blocks, host first", "[routing_policy]") {
  cost_model m;
  m.kv_bytes_per_block = 100;
  m.host_onboard_bytes_per_s = 100;  // 1 s per block
  m.disk_onboard_bytes_per_s = 10;   // 10 s per block
  route_candidate c{1, 10, 0, 0, false, nullptr};
  c.host_blocks = 2;
  c.disk_blocks = 3;
  CHECK(onboard_seconds(c, 10, m) == Approx(2 + 30));
  CHECK(onboard_seconds(c, 4, m) == Approx(2 + 20));  // 4 reused: 2 host, 2 disk
  CHECK(onboard_seconds(c, 1, m) == Approx(1));
  CHECK(onboard_seconds(c, 0, m) == 0);
  m.disk_onboard_bytes_per_s = 0;  // unknown rate: no term
  CHECK(onboard_seconds(c, 10, m) == Approx(2));
  // A decode worker prefilling locally pays its onboarding too.
  std::vector<route_candidate> d{c};
  d[0].speed = &k1000;
  m.disk_onboard_bytes_per_s = 10;
  auto plan = plan_route(d, {}, 176, 16, 0, m);
  REQUIRE(plan.decode == 0u);
  CHECK(plan.decode_scores[0].local);
  CHECK(plan.decode_scores[0].onboard_s == Approx(32));
}

namespace {

/// As model(), with 1 MB blocks at 5 GB/s: 0.2 ms to move a block, 0.5 ms per fetch.
cost_model model_with_kv() {
  auto m = model();
  m.kv_bytes_per_block = 1'000'000;
  m.kv_bytes_per_s = 5e9;
  return m;
}

}  // namespace

TEST_CASE("cost model: a possible fetch counts as reuse", "[routing_policy][fetch_policy]") {
  // 160 tokens = 10 blocks of 16 (9 reusable: the 10th holds the last token). Prefill
  // worker 2 holds 8 blocks behind a queue of 50 tokens (0.05 s).
  const auto m = model_with_kv();
  const fetch_settings on;
  std::vector<route_candidate> d{decode(10, 0)};
  std::vector<route_candidate> p{prefill(1, 0), prefill(2, 50, 8)};
  // Without fetch the cached worker wins: 0.032 + 0.05 s against 0.16 s.
  auto plain = plan_route(d, p, 160, 16, 0, m);
  REQUIRE(plain.prefill == 1u);
  CHECK_FALSE(plain.prefill_scores[0].fetch_source);
  // With it, idle worker 1 pulls the 8 blocks from worker 2 (0.5 ms + 8 × 0.2 ms) and
  // computes 32 tokens: 0.0341 s, cheaper than waiting for worker 2's queue.
  auto plan = plan_route(d, p, 160, 16, 0, m, &on);
  REQUIRE(plan.prefill == 0u);
  const auto& s = plan.prefill_scores[0];
  REQUIRE(s.fetch_source == 2u);  // decodes first, then prefills: worker 2
  CHECK(s.fetch_first == 0);
  CHECK(s.fetch_end == 8);
  CHECK(s.fetch_s == Approx(0.0005 + 8 * 0.0002));
  CHECK(s.fetch_saved_s == Approx(0.128));
  CHECK(s.prefill_s == Approx(0.032));
  CHECK(s.cached_tokens == 0);  // its own cache: the fetched part is separate
  CHECK(s.total == Approx(0.032 + 0.0021));
  CHECK(plan.cost < plain.cost);
  // The worker that holds the most fetches nothing; an idle queue keeps it the cheapest.
  CHECK_FALSE(plan.prefill_scores[1].fetch_source);
  p[1].queued_tokens = 0;
  plan = plan_route(d, p, 160, 16, 0, m, &on);
  CHECK(plan.prefill == 1u);
  // The transfer weight scales the fetch: heavy enough, computing wins again.
  p[1].queued_tokens = 50;
  auto heavy = m;
  heavy.weights.transfer = 1000;  // 2.1 s for the fetch
  plan = plan_route(d, p, 160, 16, 0, heavy, &on);
  CHECK_FALSE(plan.prefill_scores[0].fetch_source);
  CHECK(plan.prefill == 1u);
}

TEST_CASE("cost model: a prefill worker fetches from the decode worker that holds the prefix",
          "[routing_policy][fetch_policy]") {
  // Every prompt is prefilled remotely (threshold 0); decode worker 10 holds 8 blocks, which
  // it keeps (they are not sent to it again), and the prefill worker needs them to compute
  // the rest.
  const auto m = model_with_kv();
  const fetch_settings on;
  std::vector<route_candidate> d{decode(10, 0, 8)};
  std::vector<route_candidate> p{prefill(1, 0)};
  auto plan = plan_route(d, p, 160, 16, 0, m, &on);
  REQUIRE(plan.decode == 0u);
  REQUIRE(plan.prefill == 0u);
  REQUIRE(plan.prefill_scores[0].fetch_source == 0u);
  CHECK(plan.prefill_scores[0].fetch_end == 8);
  CHECK(plan.prefill_scores[0].prefill_s == Approx(0.032));
  // The decode score carries the prefill worker's fetch-reduced total.
  CHECK(plan.decode_scores[0].total ==
        Approx(2 * 0.0002 + plan.prefill_scores[0].total));  // 2 blocks move to it
}

TEST_CASE("cost model: a local prefill counts fetched tokens as cached",
          "[routing_policy][fetch_policy]") {
  // Decode worker 11 holds 9 blocks but serves 5 requests (5 ms of load); worker 10 is
  // idle and holds nothing; local prefill below 64 uncached tokens.
  const auto m = model_with_kv();
  const fetch_settings on;
  std::vector<route_candidate> d{decode(10, 0), decode(11, 5, 9)};
  std::vector<route_candidate> p{prefill(1, 0)};
  // Without fetch: worker 11 prefills 16 tokens locally (16 + 5 ms); worker 10 would go
  // remote (160 ms of prefill).
  auto plain = plan_route(d, p, 160, 16, 64, m);
  REQUIRE(plain.decode == 1u);
  CHECK_FALSE(plain.decode_scores[0].local);
  // With fetch: worker 10 pulls 9 blocks from 11 (2.3 ms), has 16 tokens left (< 64: local)
  // and wins over the loaded worker.
  auto plan = plan_route(d, p, 160, 16, 64, m, &on);
  REQUIRE(plan.decode == 0u);
  CHECK_FALSE(plan.prefill);
  const auto& s = plan.decode_scores[0];
  CHECK(s.local);
  REQUIRE(s.fetch_source == 1u);
  CHECK(s.fetch_end == 9);
  CHECK(s.prefill_s == Approx(0.016));
  CHECK(s.fetch_s == Approx(0.0005 + 9 * 0.0002));
  CHECK(s.total == Approx(0.016 + 0.0023));
}

TEST_CASE("cost model: fetch off, a draining source, unknown block bytes: no fetch",
          "[routing_policy][fetch_policy]") {
  auto m = model_with_kv();
  fetch_settings off;
  off.enabled = false;
  std::vector<route_candidate> d{decode(10, 0)};
  std::vector<route_candidate> p{prefill(1, 0), prefill(2, 50, 8)};
  auto same = [&](const route_plan& a, const route_plan& b) {
    REQUIRE(a.prefill_scores.size() == b.prefill_scores.size());
    for (size_t i = 0; i < a.prefill_scores.size(); ++i) {
      CHECK_FALSE(a.prefill_scores[i].fetch_source);
      CHECK(a.prefill_scores[i].total == Approx(b.prefill_scores[i].total));
    }
    CHECK(a.prefill == b.prefill);
    CHECK(a.cost == Approx(b.cost));
  };
  const auto plain = plan_route(d, p, 160, 16, 0, m);
  same(plan_route(d, p, 160, 16, 0, m, &off), plain);
  const fetch_settings on;
  p[1].draining = true;  // never a source (and never chosen)
  auto plan = plan_route(d, p, 160, 16, 0, m, &on);
  CHECK(plan.prefill == 0u);
  CHECK_FALSE(plan.prefill_scores[0].fetch_source);
  p[1].draining = false;
  m.kv_bytes_per_block = 0;  // the transfer cannot be estimated
  same(plan_route(d, p, 160, 16, 0, m, &on), plan_route(d, p, 160, 16, 0, m));
}

TEST_CASE("cost model: workers with the same cache and speed share one fetch plan",
          "[routing_policy][fetch_policy]") {
  // 32 idle prefill workers without the prefix, one holding 8 blocks behind a queue: each
  // of the 32 gets the same plan (from the one source), ties go to the lowest id.
  const auto m = model_with_kv();
  const fetch_settings on;
  const auto slow = rate(500);  // a slower engine saves more by fetching, same source
  std::vector<route_candidate> d{decode(100, 0)};
  std::vector<route_candidate> p;
  for (worker_id i = 1; i <= 32; ++i)
    p.push_back(prefill(i, 0));
  p[5].speed = &slow;
  p.push_back(prefill(40, 500, 8));
  auto plan = plan_route(d, p, 160, 16, 0, m, &on);
  REQUIRE(plan.prefill == 0u);
  for (size_t i = 0; i < 32; ++i) {
    INFO("prefill worker " << p[i].id);
    REQUIRE(plan.prefill_scores[i].fetch_source == 1u + 32);
    CHECK(plan.prefill_scores[i].fetch_end == 8);
    CHECK(plan.prefill_scores[i].prefill_s == Approx(i == 5 ? 0.064 : 0.032));
    CHECK(plan.prefill_scores[i].fetch_saved_s == Approx(i == 5 ? 0.256 : 0.128));
  }
}

TEST_CASE("computed tokens: the prompt less what the computing worker reuses or fetches",
          "[routing_policy][fetch_policy]") {
  const auto m = model_with_kv();
  const fetch_settings on;
  // Remote prefill on a worker holding 5 blocks of a 160-token prompt: 80 tokens to compute.
  {
    std::vector<route_candidate> d{decode(10, 0)};
    std::vector<route_candidate> p{prefill(1, 0, 5)};
    auto plan = plan_route(d, p, 160, 16, 0, m);
    REQUIRE(plan.prefill == 0u);
    CHECK(computed_tokens(plan, 160, 16) == 80);
  }
  // Remote prefill that fetches 8 blocks from the decode worker: 32 tokens to compute.
  {
    std::vector<route_candidate> d{decode(10, 0, 8)};
    std::vector<route_candidate> p{prefill(1, 0)};
    auto plan = plan_route(d, p, 160, 16, 0, m, &on);
    REQUIRE(plan.prefill == 0u);
    REQUIRE(plan.prefill_scores[0].fetch_source);
    CHECK(computed_tokens(plan, 160, 16) == 32);
  }
  // Local prefill that fetches 9 blocks: the block of the last token, 16 tokens.
  {
    std::vector<route_candidate> d{decode(10, 0), decode(11, 5, 9)};
    std::vector<route_candidate> p{prefill(1, 0)};
    auto plan = plan_route(d, p, 160, 16, 64, m, &on);
    REQUIRE(plan.decode == 0u);
    REQUIRE_FALSE(plan.prefill);
    CHECK(computed_tokens(plan, 160, 16) == 16);
  }
  // Nothing cached anywhere: the whole prompt; no decode worker: nothing.
  {
    std::vector<route_candidate> d{decode(10, 0)};
    std::vector<route_candidate> p{prefill(1, 0)};
    CHECK(computed_tokens(plan_route(d, p, 160, 16, 0, m, &on), 160, 16) == 160);
    std::vector<route_candidate> none;
    CHECK(computed_tokens(plan_route(none, p, 160, 16, 0, m, &on), 160, 16) == 0);
  }
}

TEST_CASE("cost model: a prefill worker serving cached prefixes keeps them while it is busy",
          "[routing_policy]") {
  // Multi-turn chat: prefill worker 1 holds the 9-block histories of two chats, worker 2
  // neither. Chat A's turn goes to worker 1 (16 tokens to compute); while it is queued
  // there, chat B's turn must go to worker 1 too: its queue is the 16 tokens it computes
  // (16 ms) plus B's own 16 ms, against 160 ms on worker 2. Counting A's whole prompt (160
  // tokens, as the router did) made worker 1 look 160 ms busy and sent B to worker 2,
  // which recomputed B's whole history and split the chat's prefix between the workers.
  const auto m = model();
  std::vector<route_candidate> d{decode(10, 0)};
  std::vector<route_candidate> p{prefill(1, 0, 9), prefill(2, 0)};
  auto a = plan_route(d, p, 160, 16, 0, m);
  REQUIRE(a.prefill == 0u);
  const auto queued = computed_tokens(a, 160, 16);
  CHECK(queued == 16);
  p[0].queued_tokens = queued;
  auto b = plan_route(d, p, 160, 16, 0, m);
  REQUIRE(b.prefill == 0u);
  CHECK(b.prefill_scores[0].total == Approx(0.032));
  CHECK(b.prefill_scores[1].total == Approx(0.160));
  // The whole prompt as the queue would have sent B away.
  p[0].queued_tokens = 160;
  CHECK(plan_route(d, p, 160, 16, 0, m).prefill == 1u);
}

namespace {

/// A RAG-shaped 160-token prompt in blocks of 16: system [0, 16), document A [16, 80),
/// document B [80, 144), question [144, 160).
constexpr token_range seg_a{16, 80}, seg_b{80, 144};

}  // namespace

TEST_CASE("chunk hits: tokens past the prefix, discounted by the recompute ratio",
          "[routing_policy][chunks]") {
  const std::vector<token_range> hits{{0, 16}, seg_a, seg_b};
  CHECK(chunk_hit_tokens(hits, 0) == 144);
  CHECK(chunk_hit_tokens(hits, 16) == 128);  // the system segment is a prefix hit
  CHECK(chunk_hit_tokens(hits, 80) == 64);
  CHECK(chunk_hit_tokens(hits, 96) == 0);  // B is cut by the prefix: computed, not looked up
  CHECK(chunk_hit_tokens({}, 0) == 0);
  // hits × (1 − ratio), rounding the recomputed share as recompute_budget does.
  CHECK(chunk_credit_tokens(100, 0.0f) == 100);
  CHECK(chunk_credit_tokens(100, 0.15f) == 85);
  CHECK(chunk_credit_tokens(10, 0.15f) == 8);  // 1.5 rounds to 2 recomputed
  CHECK(chunk_credit_tokens(100, 1.0f) == 0);
  CHECK(chunk_credit_tokens(100, 1.5f) == 0);
  CHECK(chunk_credit_tokens(100, -1.0f) == 100);  // below 0: as 0
  CHECK(chunk_credit_tokens(100, std::numeric_limits<float>::quiet_NaN()) == 0);
  CHECK(chunk_credit_tokens(0, 0.5f) == 0);
}

TEST_CASE("cost model: chunk hits attract a segmented prompt", "[routing_policy][chunks]") {
  // Prefill worker 2 holds documents A and B as chunks (128 tokens); at ratio 0.25 it
  // recomputes 32 of them: 64 tokens to compute (0.064 s) against 160 on worker 1.
  const auto m = model();
  std::vector<route_candidate> d{decode(10, 0)};
  std::vector<route_candidate> p{prefill(1, 0), prefill(2, 0)};
  p[1].chunk_hits = {seg_a, seg_b};
  auto plan = plan_route(d, p, 160, 16, 0, m, nullptr, 0.25f);
  REQUIRE(plan.prefill == 1u);
  const auto& s = plan.prefill_scores[1];
  CHECK(s.cached_tokens == 0);
  CHECK(s.chunk_tokens == 128);
  CHECK(s.chunk_saved_tokens == 96);
  CHECK(s.prefill_s == Approx(0.064));
  CHECK(plan.prefill_scores[0].chunk_tokens == 0);
  CHECK(plan.prefill_scores[0].prefill_s == Approx(0.16));
  // The backlog counts only what it computes.
  CHECK(computed_tokens(plan, 160, 16) == 64);
  // A lower ratio saves more; a queue longer than the saving sends the prompt elsewhere.
  CHECK(plan_route(d, p, 160, 16, 0, m, nullptr, 0.0f).prefill_scores[1].prefill_s ==
        Approx(0.032));
  p[1].queued_tokens = 95;  // 0.095 + 0.064 < 0.16
  CHECK(plan_route(d, p, 160, 16, 0, m, nullptr, 0.25f).prefill == 1u);
  p[1].queued_tokens = 97;  // 0.097 + 0.064 > 0.16
  CHECK(plan_route(d, p, 160, 16, 0, m, nullptr, 0.25f).prefill == 0u);
}

TEST_CASE("cost model: a token that is a prefix hit and a chunk hit counts once",
          "[routing_policy][chunks]") {
  // Worker 2 served system + A + B in this order before: its prefix cache holds the first
  // 5 blocks (system + A, 80 tokens) and its chunk cache A and B. A lies in the prefix
  // (exact, reused once); only B (64 tokens) comes from the chunk cache.
  const auto m = model();
  std::vector<route_candidate> d{decode(10, 0)};
  std::vector<route_candidate> p{prefill(1, 0), prefill(2, 0, 5)};
  p[1].chunk_hits = {seg_a, seg_b};
  auto plan = plan_route(d, p, 160, 16, 0, m, nullptr, 0.0f);
  REQUIRE(plan.prefill == 1u);
  const auto& s = plan.prefill_scores[1];
  CHECK(s.cached_tokens == 80);
  CHECK(s.chunk_tokens == 64);
  CHECK(s.chunk_saved_tokens == 64);
  CHECK(s.prefill_s == Approx(0.016));  // the question only
  CHECK(computed_tokens(plan, 160, 16) == 16);
  // A prefix of 6 blocks (96 tokens) cuts B: B is computed after it, not taken as a chunk.
  p[1].overlap_blocks = 6;
  plan = plan_route(d, p, 160, 16, 0, m, nullptr, 0.0f);
  CHECK(plan.prefill_scores[1].cached_tokens == 96);
  CHECK(plan.prefill_scores[1].chunk_tokens == 0);
  CHECK(plan.prefill_scores[1].prefill_s == Approx(0.064));
  CHECK(computed_tokens(plan, 160, 16) == 64);
}

TEST_CASE("cost model: ratio 1 gives chunk hits no credit", "[routing_policy][chunks]") {
  const auto m = model();
  std::vector<route_candidate> d{decode(10, 0)};
  std::vector<route_candidate> p{prefill(1, 0), prefill(2, 0)};
  p[1].chunk_hits = {seg_a, seg_b};
  for (auto plan :
       {plan_route(d, p, 160, 16, 0, m, nullptr, 1.0f), plan_route(d, p, 160, 16, 0, m)}) {
    REQUIRE(plan.prefill == 0u);  // a tie: the lower id
    CHECK(plan.prefill_scores[1].chunk_tokens == 128);
    CHECK(plan.prefill_scores[1].chunk_saved_tokens == 0);
    CHECK(plan.prefill_scores[1].prefill_s == Approx(0.16));
    CHECK(plan.prefill_scores[1].total == Approx(plan.prefill_scores[0].total));
    CHECK(computed_tokens(plan, 160, 16) == 160);
  }
}

TEST_CASE("cost model: a decode worker's chunks count for its local prefill only",
          "[routing_policy][chunks]") {
  const auto m = model();
  std::vector<route_candidate> d{decode(10, 0), decode(11, 0)};
  d[1].chunk_hits = {seg_a, seg_b};
  std::vector<route_candidate> p{prefill(1, 0)};
  // Local prefill below 100 uncached tokens: worker 11 computes 160 − 96 = 64 (ratio 0.25).
  auto plan = plan_route(d, p, 160, 16, 100, m, nullptr, 0.25f);
  REQUIRE(plan.decode == 1u);
  CHECK_FALSE(plan.prefill);
  CHECK(plan.decode_scores[1].local);
  CHECK(plan.decode_scores[1].prefill_s == Approx(0.064));
  CHECK_FALSE(plan.decode_scores[0].local);
  CHECK(computed_tokens(plan, 160, 16) == 64);
  // Always remote: the prefill worker computes, so the decode worker's chunks save nothing.
  plan = plan_route(d, p, 160, 16, 0, m, nullptr, 0.25f);
  CHECK(plan.decode_scores[1].chunk_tokens == 0);
  CHECK(plan.decode_scores[1].total == Approx(plan.decode_scores[0].total));
  CHECK(computed_tokens(plan, 160, 16) == 160);
}

TEST_CASE("cost model: the prompt's last token is computed even when every chunk hit",
          "[routing_policy][chunks]") {
  const auto m = model();
  std::vector<route_candidate> d{decode(10, 0)};
  std::vector<route_candidate> p{prefill(1, 0)};
  p[0].chunk_hits = {{0, 80}, {80, 160}};
  auto plan = plan_route(d, p, 160, 16, 0, m, nullptr, 0.0f);
  CHECK(plan.prefill_scores[0].chunk_tokens == 160);
  CHECK(plan.prefill_scores[0].chunk_saved_tokens == 159);
  CHECK(plan.prefill_scores[0].prefill_s == Approx(0.001));
  CHECK(computed_tokens(plan, 160, 16) == 1);
}

TEST_CASE("cost model: no fetch when the worker's own chunks save more",
          "[routing_policy][chunks][fetch_policy]") {
  // Decode worker 10 holds the first 8 blocks (128 tokens) as a prefix; prefill worker 1
  // holds A and B as chunks. Fetching the prefix (2.1 ms) would leave 32 tokens (0.032 s);
  // its chunks at ratio 0 leave 32 tokens as well, without the transfer: no fetch.
  const auto m = model_with_kv();
  const fetch_settings on;
  std::vector<route_candidate> d{decode(10, 0, 8)};
  std::vector<route_candidate> p{prefill(1, 0)};
  p[0].chunk_hits = {seg_a, seg_b};
  auto plan = plan_route(d, p, 160, 16, 0, m, &on, 0.0f);
  REQUIRE(plan.prefill == 0u);
  CHECK_FALSE(plan.prefill_scores[0].fetch_source);
  CHECK(plan.prefill_scores[0].chunk_saved_tokens == 128);
  CHECK(plan.prefill_scores[0].prefill_s == Approx(0.032));
  // At ratio 0.5 the chunks leave 96 tokens: the fetch (then B past the fetched prefix is
  // cut, A inside it) wins.
  plan = plan_route(d, p, 160, 16, 0, m, &on, 0.5f);
  REQUIRE(plan.prefill_scores[0].fetch_source == 0u);
  CHECK(plan.prefill_scores[0].fetch_end == 8);
  CHECK(plan.prefill_scores[0].chunk_tokens == 0);
  CHECK(plan.prefill_scores[0].prefill_s == Approx(0.032));
  CHECK(computed_tokens(plan, 160, 16) == 32);
}
