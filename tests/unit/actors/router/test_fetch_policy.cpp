#include <catch2/catch.hpp>

#include <vector>

#include "actors/router/fetch_policy.hpp"

using namespace tokenmill;

namespace {

// 16-token blocks, 1 MB each, 5 GB/s: 0.2 ms a block; the default rate prefills 16 tokens
// in 4 ms. A 100-token prompt has 6 reusable blocks (the 7th holds its last token).
cost_model model_1mb() {
  cost_model m;
  m.kv_bytes_per_block = 1'000'000;
  m.kv_bytes_per_s = 5e9;
  return m;
}

route_candidate cand(worker_id id, uint32_t overlap, bool draining = false) {
  route_candidate c;
  c.id = id;
  c.overlap_blocks = overlap;
  c.draining = draining;
  return c;
}

}  // namespace

TEST_CASE("fetch the prefix another worker holds when the transfer beats prefill",
          "[fetch_policy]") {
  auto serving = cand(1, 2);
  std::vector<route_candidate> src{cand(1, 2), cand(2, 6)};
  auto p = plan_fetch(serving, src, 100, 16, model_1mb(), {});
  REQUIRE(p.source == 1u);
  CHECK(p.first_block == 2);
  CHECK(p.end_block == 6);
  CHECK(p.blocks() == 4);
  CHECK(p.saved_s == Approx(64.0 / 4000));
  CHECK(p.transfer_s == Approx(0.0005 + 4 * 0.0002));
  CHECK(p.gain_s == Approx(p.saved_s - p.transfer_s));
}

TEST_CASE("no fetch when computing is cheaper than moving the blocks", "[fetch_policy]") {
  auto m = model_1mb();
  m.kv_bytes_per_s = 1e8;  // 10 ms a block against 4 ms to compute it
  std::vector<route_candidate> src{cand(2, 6)};
  auto p = plan_fetch(cand(1, 0), src, 100, 16, m, {});
  CHECK_FALSE(p.source);
  // Between the two: 3.5 ms a block still wins.
  m.kv_bytes_per_s = 1e6 / 0.0035;
  p = plan_fetch(cand(1, 0), src, 100, 16, m, {});
  CHECK(p.source == 0u);
  CHECK(p.gain_s == Approx(6 * 0.004 - 0.0005 - 6 * 0.0035));
  // The transfer weight scales the cost: doubled, the same fetch loses.
  m.weights.transfer = 2;
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 16, m, {}).source);
}

TEST_CASE("the fixed overhead keeps tiny fetches from being planned", "[fetch_policy]") {
  std::vector<route_candidate> src{cand(2, 1)};
  fetch_settings s;
  s.overhead_s = 0.005;  // more than one block's 4 ms of prefill
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 16, model_1mb(), s).source);
  s.overhead_s = 0.001;
  CHECK(plan_fetch(cand(1, 0), src, 100, 16, model_1mb(), s).source == 0u);
  s.min_blocks = 2;
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 16, model_1mb(), s).source);
}

TEST_CASE("the block of the prompt's last token is never fetched", "[fetch_policy]") {
  // 64 tokens = 4 full blocks; the 4th holds the last token and is always computed.
  std::vector<route_candidate> src{cand(2, 4)};
  auto p = plan_fetch(cand(1, 0), src, 64, 16, model_1mb(), {});
  REQUIRE(p.source == 0u);
  CHECK(p.end_block == 3);
  // A serving worker that already holds every reusable block fetches nothing.
  CHECK_FALSE(plan_fetch(cand(1, 3), src, 64, 16, model_1mb(), {}).source);
  // A one-block prompt has nothing reusable.
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 16, 16, model_1mb(), {}).source);
}

TEST_CASE("sources: not the serving worker, not a draining one, the best gain", "[fetch_policy]") {
  // The serving worker itself (listed among the candidates) is never its own source.
  std::vector<route_candidate> self_only{cand(1, 6)};
  CHECK_FALSE(plan_fetch(cand(1, 0), self_only, 100, 16, model_1mb(), {}).source);
  std::vector<route_candidate> src{cand(2, 6, true), cand(3, 3), cand(4, 5)};
  auto p = plan_fetch(cand(1, 0), src, 100, 16, model_1mb(), {});
  REQUIRE(p.source == 2u);  // worker 4: 5 blocks; worker 2 (6) drains
  CHECK(p.end_block == 5);
  // Equal gains: the lower id.
  std::vector<route_candidate> tie{cand(7, 5), cand(5, 5)};
  CHECK(plan_fetch(cand(1, 0), tie, 100, 16, model_1mb(), {}).source == 1u);
}

TEST_CASE("a source's second-tier blocks cost their onboarding", "[fetch_policy]") {
  auto m = model_1mb();
  m.disk_onboard_bytes_per_s = 1e8;  // 10 ms a block from disk
  auto x = cand(2, 6);
  std::vector<route_candidate> src{x};
  CHECK(plan_fetch(cand(1, 0), src, 100, 16, m, {}).source == 0u);
  src[0].disk_blocks = 6;
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 16, m, {}).source);
  // From the host tier (10 GB/s by default) it still pays.
  src[0].disk_blocks = 0;
  src[0].host_blocks = 6;
  auto p = plan_fetch(cand(1, 0), src, 100, 16, m, {});
  REQUIRE(p.source == 0u);
  CHECK(p.transfer_s == Approx(0.0005 + 6 * 0.0002 + 6 * 0.0001));
}

TEST_CASE("no fetch when it is off or the sizes are unknown", "[fetch_policy]") {
  std::vector<route_candidate> src{cand(2, 6)};
  fetch_settings off;
  off.enabled = false;
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 16, model_1mb(), off).source);
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 0, model_1mb(), {}).source);
  auto m = model_1mb();
  m.kv_bytes_per_block = 0;
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 16, m, {}).source);
  m = model_1mb();
  m.kv_bytes_per_s = 0;
  CHECK_FALSE(plan_fetch(cand(1, 0), src, 100, 16, m, {}).source);
}

TEST_CASE("a profile curve decides the saving on the serving worker", "[fetch_policy]") {
  prefill_speed slow;
  slow.points = {{16, 0.001}, {96, 0.100}};  // the late tokens cost most
  auto serving = cand(1, 0);
  serving.speed = &slow;
  auto m = model_1mb();
  m.kv_bytes_per_s = 1e6 / 0.01;  // 10 ms a block: 60 ms for 6
  std::vector<route_candidate> src{cand(2, 6)};
  auto p = plan_fetch(serving, src, 100, 16, m, {});
  REQUIRE(p.source == 0u);
  CHECK(p.saved_s ==
        Approx(uncached_prefill_seconds(slow, 100, 0) - uncached_prefill_seconds(slow, 100, 96)));
}

TEST_CASE("fetched_prefix accepts the leading run that was written", "[fetch_policy]") {
  std::vector<block_id> asked{7, 3, 9};
  auto r = fetched_prefix(asked, std::vector<block_id>{7, 3, 9}, 3, "d1");
  REQUIRE(r);
  CHECK(*r == 3);
  r = fetched_prefix(asked, std::vector<block_id>{7}, 1, "d1");
  REQUIRE(r);
  CHECK(*r == 1);
  r = fetched_prefix(asked, std::vector<block_id>{}, 0, "d1");
  REQUIRE(r);
  CHECK(*r == 0);
}

TEST_CASE("fetched_prefix rejects a reply that does not match the request", "[fetch_policy]") {
  std::vector<block_id> asked{7, 3, 9};
  auto r = fetched_prefix(asked, std::vector<block_id>{7, 9}, 2, "d1");
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::invalid_request);
  CHECK_THAT(r.error().message,
             Catch::Contains("block 9 written at position 1") && Catch::Contains("d1"));
  r = fetched_prefix(asked, std::vector<block_id>{7, 4}, 2, "d1");
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("block 4 at position 1 was not asked for"));
  r = fetched_prefix(asked, std::vector<block_id>{7, 3}, 1, "d1");
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("2 blocks written but 1 checksums"));
  r = fetched_prefix(asked, std::vector<block_id>{7, 3, 9, 1}, 4, "d1");
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("only 3 asked for"));
}
