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
