// The second KV tier: LRU bookkeeping, demote/onboard byte for byte with checksums, the
// host -> disk -> dropped cascade, its events and counters, bad configs; and kv_cache with a
// tier attached (an evicted prefix comes back by onboarding, not recomputation).
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "engine/kv_cache.hpp"
#include "engine/kv_tier.hpp"

using namespace tokenmill;

namespace {

kv_layout small_layout() {
  kv_layout l;
  l.layers = 1;
  l.kv_heads = 1;
  l.head_dim = 8;
  l.block_tokens = 4;
  l.dtype_bytes = 2;
  return l;
}

/// Fills block `b` with bytes derived from `seed`.
void fill(block_pool& pool, block_id b, uint8_t seed) {
  auto* p = pool.block(b);
  for (size_t i = 0; i < pool.block_bytes(); ++i)
    p[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
}

bool holds(const block_pool& pool, block_id b, uint8_t seed) {
  const auto* p = pool.block(b);
  for (size_t i = 0; i < pool.block_bytes(); ++i)
    if (p[i] != std::byte(static_cast<uint8_t>(seed + i * 7))) return false;
  return true;
}

std::unique_ptr<kv_tier> make_tier(const block_pool& pool, uint32_t host, uint32_t disk) {
  auto t = kv_tier::make(pool, kv_tier_config{host, disk, ""}, "test");
  REQUIRE(t);
  return std::move(t.value());
}

}  // namespace

TEST_CASE("tier_lru evicts the least recently used entry and reuses its slot", "[kv_tier]") {
  tier_lru lru(2);
  auto a = lru.put(1);
  auto b = lru.put(2);
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->slot == 0);
  CHECK(b->slot == 1);
  CHECK_FALSE(a->evicted);
  CHECK(lru.size() == 2);
  // Putting 1 again refreshes it: 2 is now the oldest.
  auto again = lru.put(1);
  REQUIRE(again);
  CHECK(again->slot == 0);
  CHECK_FALSE(again->evicted);
  auto c = lru.put(3);
  REQUIRE(c);
  CHECK(c->evicted == std::optional<uint64_t>{2});
  CHECK(c->slot == 1);
  CHECK_FALSE(lru.find(2));
  CHECK(lru.find(3) == std::optional<uint32_t>{1});
  // take frees the slot; the next put gets it without evicting.
  CHECK(lru.take(1) == std::optional<uint32_t>{0});
  CHECK_FALSE(lru.take(1));
  auto d = lru.put(4);
  REQUIRE(d);
  CHECK(d->slot == 0);
  CHECK_FALSE(d->evicted);
  CHECK(lru.size() == 2);
}

TEST_CASE("tier_lru with capacity 0 holds nothing", "[kv_tier]") {
  tier_lru lru(0);
  CHECK_FALSE(lru.put(1));
  CHECK_FALSE(lru.find(1));
  CHECK(lru.size() == 0);
}

TEST_CASE("kv_tier refuses configs it cannot serve, naming the field", "[kv_tier]") {
  block_pool pool(small_layout(), 4);
  auto no_host = kv_tier::make(pool, kv_tier_config{0, 8, ""}, "w");
  REQUIRE_FALSE(no_host);
  CHECK(no_host.error().code == errc::invalid_request);
  CHECK(no_host.error().message.find("kv_disk_blocks 8 needs kv_host_blocks") != std::string::npos);
  auto nothing = kv_tier::make(pool, kv_tier_config{0, 0, ""}, "w");
  REQUIRE_FALSE(nothing);
  CHECK(nothing.error().message.find("kv_host_blocks is 0") != std::string::npos);
  auto bad_dir = kv_tier::make(pool, kv_tier_config{2, 2, "/nonexistent/dir"}, "w");
  REQUIRE_FALSE(bad_dir);
  CHECK(bad_dir.error().message.find("kv_disk_dir '/nonexistent/dir'") != std::string::npos);
}

TEST_CASE("kv_tier: demote then onboard gives the same bytes, host then disk", "[kv_tier]") {
  block_pool pool(small_layout(), 4);
  auto t = make_tier(pool, 1, 1);
  CHECK(t->has_disk());
  fill(pool, 0, 10);
  fill(pool, 1, 20);
  fill(pool, 2, 30);
  t->demote(pool, 0, 100);
  CHECK(t->where(100) == kv_tier_level::host);
  t->demote(pool, 1, 200);  // host holds one block: 100 goes to disk
  CHECK(t->where(100) == kv_tier_level::disk);
  CHECK(t->where(200) == kv_tier_level::host);
  t->demote(pool, 2, 300);  // 200 to disk, 100 dropped
  CHECK_FALSE(t->where(100));
  CHECK(t->where(200) == kv_tier_level::disk);
  CHECK(t->where(300) == kv_tier_level::host);

  auto ev = t->take_events();
  CHECK(ev.host_stored == std::vector<uint64_t>{300});  // 100 and 200 came and went
  CHECK(ev.host_removed == std::vector<uint64_t>{100, 200});
  CHECK(ev.disk_stored == std::vector<uint64_t>{200});
  CHECK(ev.disk_removed == std::vector<uint64_t>{100});

  // Onboard into other blocks: the bytes are the ones that left.
  fill(pool, 3, 0);
  REQUIRE(t->onboard(200, pool, 3));
  CHECK(holds(pool, 3, 20));
  REQUIRE(t->onboard(300, pool, 0));
  CHECK(holds(pool, 0, 30));
  CHECK_FALSE(t->onboard(100, pool, 1));  // dropped: not held
  CHECK_FALSE(t->onboard(300, pool, 1));  // onboarding took it out of the tier
  CHECK_FALSE(t->where(200));
  ev = t->take_events();
  CHECK(ev.host_removed == std::vector<uint64_t>{300});
  CHECK(ev.disk_removed == std::vector<uint64_t>{200});

  const auto bb = pool.block_bytes();
  auto host = t->stats(kv_tier_level::host);
  CHECK(host.hits == 1);
  CHECK(host.bytes_in == 3 * bb);
  CHECK(host.bytes_out == bb);
  CHECK(host.evictions == 2);
  CHECK(host.used == 0);
  CHECK(host.capacity == 1);
  auto disk = t->stats(kv_tier_level::disk);
  CHECK(disk.hits == 1);
  CHECK(disk.bytes_in == 2 * bb);
  CHECK(disk.bytes_out == bb);
  CHECK(disk.evictions == 1);
  CHECK(disk.used == 0);
}

TEST_CASE("kv_tier: a block demoted again replaces its older copy", "[kv_tier]") {
  block_pool pool(small_layout(), 2);
  auto t = make_tier(pool, 1, 2);
  fill(pool, 0, 1);
  fill(pool, 1, 2);
  t->demote(pool, 0, 7);
  t->demote(pool, 1, 8);  // 7 to disk
  CHECK(t->where(7) == kv_tier_level::disk);
  fill(pool, 0, 9);
  t->demote(pool, 0, 7);  // 7 back in host with the new bytes, 8 to disk
  CHECK(t->where(7) == kv_tier_level::host);
  CHECK(t->where(8) == kv_tier_level::disk);
  REQUIRE(t->onboard(7, pool, 1));
  CHECK(holds(pool, 1, 9));
  // Out-of-range blocks are refused and change nothing.
  CHECK_FALSE(t->onboard(8, pool, 5));
  CHECK(t->where(8) == kv_tier_level::disk);
  t->demote(pool, 9, 11);
  CHECK_FALSE(t->where(11));
}

TEST_CASE("kv_tier without disk drops the host level's victim", "[kv_tier]") {
  block_pool pool(small_layout(), 2);
  auto t = make_tier(pool, 1, 0);
  CHECK_FALSE(t->has_disk());
  t->demote(pool, 0, 1);
  t->demote(pool, 1, 2);
  CHECK_FALSE(t->where(1));
  CHECK(t->where(2) == kv_tier_level::host);
  CHECK(t->stats(kv_tier_level::host).evictions == 1);
  CHECK(t->stats(kv_tier_level::disk).capacity == 0);
}

TEST_CASE("kv_cache with a tier onboards an evicted prefix instead of losing it", "[kv_tier]") {
  block_pool pool(small_layout(), 4);
  kv_cache cache(pool);
  cache.attach_tier(make_tier(pool, 4, 0));
  const std::vector<uint64_t> chain{11, 22, 33};
  auto a = *cache.allocate(3);
  for (size_t i = 0; i < 3; ++i) {
    fill(pool, a[i], static_cast<uint8_t>(40 + i));
    cache.commit(a[i], chain[i]);
  }
  CHECK(cache.release(a));
  cache.take_events();
  // A request that needs the whole pool evicts all three, latest block first.
  auto big = *cache.allocate(4);
  auto ev = cache.take_events();
  CHECK(ev.removed == std::vector<uint64_t>{33, 22, 11});
  CHECK(ev.tier.host_stored == std::vector<uint64_t>{33, 22, 11});
  CHECK(cache.cached() == 0);
  // Nothing free: the prefix cannot come back yet.
  CHECK(cache.acquire_prefix(chain, 3).empty());
  for (auto b : big)
    fill(pool, b, 0);
  CHECK(cache.release(big));

  auto hit = cache.acquire_prefix(chain, 3);
  REQUIRE(hit.size() == 3);
  for (size_t i = 0; i < 3; ++i)
    CHECK(holds(pool, hit[i], static_cast<uint8_t>(40 + i)));
  CHECK(cache.onboarded() == 3);
  CHECK(cache.hits() == 3);
  CHECK(cache.cached() == 3);
  CHECK(cache.referenced() == 3);
  ev = cache.take_events();
  CHECK(ev.stored == chain);
  CHECK(ev.tier.host_removed == std::vector<uint64_t>{11, 22, 33});
  CHECK(cache.tier()->stats(kv_tier_level::host).hits == 3);
  // The onboarded blocks are ordinary cached blocks now: a second hit pins, no copy.
  auto again = cache.acquire_prefix(chain, 3);
  CHECK(again == hit);
  CHECK(cache.onboarded() == 3);
  CHECK(cache.release(again));
  CHECK(cache.release(hit));
}

TEST_CASE("kv_cache with a tier: the run stops at the first block held nowhere", "[kv_tier]") {
  block_pool pool(small_layout(), 3);
  kv_cache cache(pool);
  cache.attach_tier(make_tier(pool, 1, 0));  // room for one evicted block only
  const std::vector<uint64_t> chain{1, 2, 3};
  auto a = *cache.allocate(3);
  for (size_t i = 0; i < 3; ++i)
    cache.commit(a[i], chain[i]);
  CHECK(cache.release(a));
  auto big = *cache.allocate(3);  // evicts 3, 2, 1: the tier keeps the last one, 1
  CHECK(cache.tier()->where(1) == kv_tier_level::host);
  CHECK_FALSE(cache.tier()->where(2));
  CHECK(cache.release(big));
  auto hit = cache.acquire_prefix(chain, 3);
  CHECK(hit.size() == 1);
  CHECK(cache.onboarded() == 1);
  CHECK(cache.release(hit));
}
