#include <catch2/catch.hpp>

#include <vector>

#include "engine/kv_cache.hpp"

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
}  // namespace

TEST_CASE("kv_cache allocates and releases with reference counts", "[kv_cache]") {
  block_pool pool(small_layout(), 8);
  kv_cache cache(pool);
  auto a = cache.allocate(3);
  REQUIRE(a);
  CHECK(cache.referenced() == 3);
  CHECK(cache.available() == 5);
  CHECK_FALSE(cache.allocate(6));
  CHECK(cache.release(*a));
  CHECK(cache.referenced() == 0);
  CHECK(pool.free() == 8);         // nothing was committed: the blocks went back to the pool
  CHECK_FALSE(cache.release(*a));  // double release is refused
  std::vector<block_id> bad{99};
  CHECK_FALSE(cache.release(bad));
}

TEST_CASE("committed blocks are reused by a later request with the same prefix", "[kv_cache]") {
  block_pool pool(small_layout(), 8);
  kv_cache cache(pool);
  std::vector<uint64_t> chain{11, 22, 33};
  auto a = *cache.allocate(4);
  for (size_t i = 0; i < chain.size(); ++i)
    cache.commit(a[i], chain[i]);
  auto ev = cache.take_events();
  CHECK(ev.stored == chain);
  CHECK(ev.removed.empty());
  CHECK(cache.cached() == 3);

  // While referenced, a match pins the same blocks (refcount 2).
  auto hit = cache.acquire_prefix(chain, 2);
  REQUIRE(hit.size() == 2);
  CHECK(hit[0] == a[0]);
  CHECK(hit[1] == a[1]);
  CHECK(cache.refs(a[0]) == 2);

  CHECK(cache.release(a));
  // Block a[3] was never committed: back to the pool; a[2] stays cached, unreferenced.
  CHECK(cache.referenced() == 2);
  CHECK(cache.cached() == 3);
  CHECK(cache.cached_prefix(chain) == 3);
  std::vector<uint64_t> other{11, 99};
  CHECK(cache.cached_prefix(other) == 1);
  CHECK(cache.release(hit));
  CHECK(cache.referenced() == 0);
  CHECK(cache.available() == 8);
  CHECK(cache.take_events().empty());
}

TEST_CASE("a hash already cached is not committed twice", "[kv_cache]") {
  block_pool pool(small_layout(), 4);
  kv_cache cache(pool);
  auto a = *cache.allocate(1);
  auto b = *cache.allocate(1);
  cache.commit(a[0], 7);
  cache.commit(b[0], 7);  // same content computed twice: b stays private
  cache.commit(a[0], 8);  // a block holds one hash
  CHECK(cache.cached() == 1);
  CHECK(cache.release(b));
  CHECK(pool.free() == 3);
  CHECK(cache.take_events().stored == std::vector<uint64_t>{7});
}

TEST_CASE("allocation evicts unreferenced cached blocks, least recently used first", "[kv_cache]") {
  block_pool pool(small_layout(), 4);
  kv_cache cache(pool);
  auto a = *cache.allocate(4);
  for (uint64_t i = 0; i < 4; ++i)
    cache.commit(a[i], 100 + i);
  (void)cache.take_events();
  // Release in the order 2, 0, 3, 1: that is the eviction order.
  for (auto i : {2, 0, 3, 1}) {
    std::vector<block_id> one{a[i]};
    REQUIRE(cache.release(one));
  }
  // Reusing hash 100 (block a[0]) makes it recently used.
  std::vector<uint64_t> chain{100};
  auto pinned = cache.acquire_prefix(chain, 1);
  REQUIRE(pinned.size() == 1);
  CHECK(cache.release(pinned));
  auto got = cache.allocate(2);
  REQUIRE(got);
  auto ev = cache.take_events();
  CHECK(ev.removed == std::vector<uint64_t>{102, 103});
  CHECK(cache.cached() == 2);
  // Referenced blocks are never evicted.
  auto more = cache.allocate(2);
  REQUIRE(more);
  CHECK_FALSE(cache.allocate(1));
  CHECK(cache.take_events().removed == std::vector<uint64_t>{101, 100});
}

TEST_CASE("a block stored and evicted between two event takes reports only removal", "[kv_cache]") {
  block_pool pool(small_layout(), 1);
  kv_cache cache(pool);
  auto a = *cache.allocate(1);
  cache.commit(a[0], 5);
  CHECK(cache.release(a));
  auto b = cache.allocate(1);  // evicts hash 5 before anyone heard of it
  REQUIRE(b);
  auto ev = cache.take_events();
  CHECK(ev.stored.empty());
  CHECK(ev.removed == std::vector<uint64_t>{5});
}
