// The kv-store's per-level index: events per level, the overlap counted across levels (pool
// first), a worker's loss in every level, and events naming an unknown level.
#include <catch2/catch.hpp>

#include <vector>

#include "actors/kv_store/tiered_index.hpp"

using namespace tokenmill;

namespace {
constexpr uint8_t pool = 0, host = 1, disk = 2;
}

TEST_CASE("tiered_index without tiers is the pool index's overlap", "[kv_store]") {
  tiered_index idx;
  const std::vector<uint64_t> chain{1, 2, 3, 4};
  REQUIRE(idx.apply(7, true, std::vector<uint64_t>{1, 2, 3}, pool));
  REQUIRE(idx.apply(9, true, std::vector<uint64_t>{1}, pool));
  auto o = idx.overlap(chain);
  REQUIRE(o.size() == 2);
  CHECK(o[0].worker == 7);
  CHECK(o[0].blocks == 3);
  CHECK(o[0].host_blocks == 0);
  CHECK(o[1].worker == 9);
  CHECK(o[1].blocks == 1);
}

TEST_CASE("tiered_index counts a run across pool, host and disk", "[kv_store]") {
  tiered_index idx;
  const std::vector<uint64_t> chain{1, 2, 3, 4, 5, 6};
  // Worker 7: block 1 in the pool, 2 on host, 3 in the pool, 4 on disk, 5 nowhere.
  idx.apply(7, true, std::vector<uint64_t>{1, 3}, pool);
  idx.apply(7, true, std::vector<uint64_t>{2}, host);
  idx.apply(7, true, std::vector<uint64_t>{4, 6}, disk);
  // Worker 8 holds the first block only in its host tier.
  idx.apply(8, true, std::vector<uint64_t>{1, 2}, host);
  auto o = idx.overlap(chain);
  REQUIRE(o.size() == 2);
  CHECK(o[0].worker == 7);
  CHECK(o[0].blocks == 4);
  CHECK(o[0].host_blocks == 1);
  CHECK(o[0].disk_blocks == 1);
  CHECK(o[1].worker == 8);
  CHECK(o[1].blocks == 2);
  CHECK(o[1].host_blocks == 2);
  CHECK(o[1].disk_blocks == 0);

  // Block 2 onboarded by worker 7: out of host, into the pool.
  idx.apply(7, false, std::vector<uint64_t>{2}, host);
  idx.apply(7, true, std::vector<uint64_t>{2}, pool);
  o = idx.overlap(chain);
  CHECK(o[0].blocks == 4);
  CHECK(o[0].host_blocks == 0);
  CHECK(o[0].disk_blocks == 1);
  CHECK(idx.level(kv_tier_level::host).entries() == 2);  // worker 8's

  // Worker 8 leaves: gone from every level.
  idx.drop_worker(8);
  o = idx.overlap(chain);
  REQUIRE(o.size() == 1);
  CHECK(o[0].worker == 7);
  CHECK(idx.level(kv_tier_level::host).entries() == 0);
  idx.drop_worker(7);
  CHECK(idx.overlap(chain).empty());
}

TEST_CASE("tiered_index refuses an event for an unknown level and changes nothing", "[kv_store]") {
  tiered_index idx;
  CHECK_FALSE(idx.apply(7, true, std::vector<uint64_t>{1}, 3));
  CHECK_FALSE(idx.apply(7, true, std::vector<uint64_t>{1}, 255));
  for (auto t : {kv_tier_level::pool, kv_tier_level::host, kv_tier_level::disk})
    CHECK(idx.level(t).entries() == 0);
  CHECK(idx.overlap(std::vector<uint64_t>{1}).empty());
  CHECK(idx.overlap(std::vector<uint64_t>{}).empty());
}

TEST_CASE("tiered_index answers prefix overlap and chunk holders in one query",
          "[kv_store][chunks]") {
  tiered_index idx;
  const std::vector<uint64_t> chain{1, 2, 3};
  const std::vector<std::vector<uint64_t>> chunks{{50, 51}, {60}, {70, 71}};
  REQUIRE(idx.apply(4, true, std::vector<uint64_t>{1, 2}, pool));
  REQUIRE(idx.apply(4, true, std::vector<uint64_t>{60}, pool));
  // Worker 8 holds no prefix block but chunks 0 and 2; chunk 1 only in its host tier.
  REQUIRE(idx.apply(8, true, std::vector<uint64_t>{50, 51, 70, 71}, pool));
  REQUIRE(idx.apply(8, true, std::vector<uint64_t>{60}, host));
  // Worker 6 holds half of chunk 2: not a hit.
  REQUIRE(idx.apply(6, true, std::vector<uint64_t>{71}, pool));
  auto o = idx.overlap(chain, chunks);
  REQUIRE(o.size() == 2);
  CHECK(o[0].worker == 4);
  CHECK(o[0].blocks == 2);
  CHECK(o[0].chunks == std::vector<uint32_t>{1});
  CHECK(o[1].worker == 8);
  CHECK(o[1].blocks == 0);
  CHECK(o[1].chunks == std::vector<uint32_t>{0, 2});
  // Without chunks: the prefix overlap alone.
  auto plain = idx.overlap(chain, {});
  REQUIRE(plain.size() == 1);
  CHECK(plain[0].worker == 4);
  CHECK(plain[0].chunks.empty());
}
