#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "engine/block_hash.hpp"
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

TEST_CASE("chunk blocks share the pool, reference counts and eviction with prefix blocks",
          "[kv_cache]") {
  // Block size 4: a 10-token document is 3 chunk blocks (the last one partial).
  block_pool pool(small_layout(), 8);
  kv_cache cache(pool);
  std::vector<token_id> doc_a = {50, 51, 52, 53, 54, 55, 56, 57, 58, 59};
  std::vector<token_id> doc_b = {70, 71, 72, 73, 74, 75};
  const auto ha = chunk_block_hashes(doc_a, 4), hb = chunk_block_hashes(doc_b, 4);
  REQUIRE(ha.size() == 3);
  REQUIRE(hb.size() == 2);

  // Request 1 computes doc A alone and commits its blocks under the chunk hashes.
  auto a = *cache.allocate(3);
  for (size_t i = 0; i < 3; ++i)
    cache.commit(a[i], ha[i]);
  CHECK(cache.take_events().stored == ha);

  // Request 2 has doc A at another offset and doc B: A is a hit, B is not (partly cached).
  auto hit_a = cache.acquire_prefix(ha, 3);
  CHECK(hit_a == a);
  CHECK(cache.refs(a[0]) == 2);
  CHECK(cache.acquire_prefix(hb, 2).empty());
  auto b = *cache.allocate(2);
  for (size_t i = 0; i < 2; ++i)
    cache.commit(b[i], hb[i]);
  CHECK(cache.release(a));  // request 1 done: request 2 still pins A
  CHECK(cache.refs(a[0]) == 1);
  CHECK(cache.release(hit_a));
  CHECK(cache.release(b));
  CHECK(cache.referenced() == 0);
  CHECK(cache.cached() == 5);
  CHECK(cache.available() == 8);
  cache.take_events();

  // Touch B again so A is the least recently used; a large allocation evicts A's blocks
  // first and reports their chunk hashes removed.
  CHECK(cache.release(cache.acquire_prefix(hb, 2)));
  auto big = cache.allocate(6);
  REQUIRE(big);
  auto ev = cache.take_events();
  CHECK(ev.removed.size() == 3);
  CHECK(std::is_permutation(ev.removed.begin(), ev.removed.end(), ha.begin()));
  CHECK(cache.cached_prefix(ha) == 0);
  CHECK(cache.cached_prefix(hb) == 2);
}
