#include <catch2/catch.hpp>

#include <algorithm>
#include <iterator>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "actors/kv_store/kv_index.hpp"

using namespace tokenmill;

namespace {
using overlaps = std::vector<std::pair<worker_id, uint32_t>>;
}

TEST_CASE("an empty index knows nothing", "[kv_index]") {
  kv_index idx;
  CHECK(idx.entries() == 0);
  CHECK(idx.blocks() == 0);
  std::vector<uint64_t> chain{1, 2, 3};
  CHECK(idx.overlap(chain).empty());
  CHECK(idx.overlap({}).empty());
  idx.removed(1, chain);  // unknown hashes are ignored
  idx.drop_worker(1);
  CHECK(idx.entries() == 0);
}

TEST_CASE("stored is idempotent", "[kv_index]") {
  kv_index idx;
  std::vector<uint64_t> h{10, 20, 30};
  idx.stored(1, h);
  CHECK(idx.entries() == 3);
  CHECK(idx.blocks() == 3);
  idx.stored(1, h);
  std::vector<uint64_t> dup{10, 10};
  idx.stored(1, dup);
  CHECK(idx.entries() == 3);
  CHECK(idx.blocks() == 3);
  CHECK(idx.overlap(h) == overlaps{{1, 3}});

  idx.stored(2, h);  // another worker holding the same blocks
  CHECK(idx.entries() == 6);
  CHECK(idx.blocks() == 3);
}

TEST_CASE("removed is idempotent and forgets empty hashes", "[kv_index]") {
  kv_index idx;
  std::vector<uint64_t> h{10, 20, 30};
  idx.stored(1, h);
  idx.stored(2, std::vector<uint64_t>{10});
  std::vector<uint64_t> r{20, 99};
  idx.removed(1, r);
  CHECK(idx.entries() == 3);  // 10:{1,2}, 30:{1}
  CHECK(idx.blocks() == 2);
  idx.removed(1, r);
  CHECK(idx.entries() == 3);
  CHECK(idx.blocks() == 2);
  idx.removed(3, h);  // a worker that holds nothing
  CHECK(idx.entries() == 3);
  idx.removed(2, h);
  CHECK(idx.entries() == 2);
  CHECK(idx.blocks() == 2);
  idx.removed(1, h);
  CHECK(idx.entries() == 0);
  CHECK(idx.blocks() == 0);
}

TEST_CASE("overlap counts leading blocks without gaps", "[kv_index]") {
  kv_index idx;
  std::vector<uint64_t> chain{1, 2, 3, 4, 5};
  idx.stored(1, std::vector<uint64_t>{1, 2, 3, 4, 5});
  idx.stored(2, std::vector<uint64_t>{1, 2, 4, 5});  // gap at 3
  idx.stored(3, std::vector<uint64_t>{2, 3, 4, 5});  // lacks the first block
  idx.stored(4, std::vector<uint64_t>{1});
  CHECK(idx.overlap(chain) == overlaps{{1, 5}, {2, 2}, {4, 1}});
  std::vector<uint64_t> prefix{1, 2};
  CHECK(idx.overlap(prefix) == overlaps{{1, 2}, {2, 2}, {4, 1}});
  std::vector<uint64_t> other{2, 3};
  CHECK(idx.overlap(other) == overlaps{{1, 2}, {2, 1}, {3, 2}});  // 2 lacks block 3
  std::vector<uint64_t> unknown{77, 1};
  CHECK(idx.overlap(unknown).empty());
}

TEST_CASE("overlap is sorted by worker id whatever the insertion order", "[kv_index]") {
  kv_index idx;
  std::vector<uint64_t> chain{5, 6};
  for (worker_id w : {9u, 3u, 7u, 1u})
    idx.stored(w, chain);
  idx.stored(3, std::vector<uint64_t>{});  // storing nothing changes nothing
  CHECK(idx.overlap(chain) == overlaps{{1, 2}, {3, 2}, {7, 2}, {9, 2}});
}

TEST_CASE("overlap reflects removals in the middle of a chain", "[kv_index]") {
  kv_index idx;
  std::vector<uint64_t> chain{1, 2, 3, 4};
  idx.stored(1, chain);
  idx.stored(2, chain);
  idx.removed(1, std::vector<uint64_t>{3});
  CHECK(idx.overlap(chain) == overlaps{{1, 2}, {2, 4}});
  idx.removed(2, std::vector<uint64_t>{1});
  CHECK(idx.overlap(chain) == overlaps{{1, 2}});
  idx.stored(1, std::vector<uint64_t>{3});
  CHECK(idx.overlap(chain) == overlaps{{1, 4}});
}

TEST_CASE("drop_worker forgets one worker only", "[kv_index]") {
  kv_index idx;
  std::vector<uint64_t> a{1, 2, 3}, b{1, 2, 8, 9};
  idx.stored(1, a);
  idx.stored(2, b);
  CHECK(idx.entries() == 7);
  CHECK(idx.blocks() == 5);
  idx.drop_worker(1);
  CHECK(idx.entries() == 4);
  CHECK(idx.blocks() == 4);  // 3 was only on worker 1
  CHECK(idx.overlap(a) == overlaps{{2, 2}});
  CHECK(idx.overlap(b) == overlaps{{2, 4}});
  idx.drop_worker(1);  // again: nothing to do
  idx.drop_worker(42);
  CHECK(idx.entries() == 4);
  idx.drop_worker(2);
  CHECK(idx.entries() == 0);
  CHECK(idx.blocks() == 0);
  CHECK(idx.overlap(b).empty());
}

namespace {

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// The obvious index the fast one must agree with.
struct reference_index {
  std::map<uint64_t, std::set<worker_id>> holders;
  void stored(worker_id w, const std::vector<uint64_t>& hs) {
    for (auto h : hs)
      holders[h].insert(w);
  }
  void removed(worker_id w, const std::vector<uint64_t>& hs) {
    for (auto h : hs)
      if (auto it = holders.find(h); it != holders.end()) {
        it->second.erase(w);
        if (it->second.empty()) holders.erase(it);
      }
  }
  void drop(worker_id w) {
    for (auto it = holders.begin(); it != holders.end();) {
      it->second.erase(w);
      it = it->second.empty() ? holders.erase(it) : std::next(it);
    }
  }
  overlaps overlap(const std::vector<uint64_t>& chain) const {
    overlaps out;
    if (chain.empty()) return out;
    auto first = holders.find(chain[0]);
    if (first == holders.end()) return out;
    for (auto w : first->second) {
      uint32_t n = 1;
      while (n < chain.size()) {
        auto it = holders.find(chain[n]);
        if (it == holders.end() || !it->second.count(w)) break;
        ++n;
      }
      out.emplace_back(w, n);
    }
    return out;
  }
  size_t entries() const {
    size_t n = 0;
    for (const auto& [h, ws] : holders)
      n += ws.size();
    return n;
  }
};

}  // namespace

TEST_CASE("a hash of 0 is a block like any other", "[kv_index]") {
  kv_index idx;
  std::vector<uint64_t> chain{0, 5, 0};
  idx.stored(3, chain);
  CHECK(idx.blocks() == 2);
  CHECK(idx.entries() == 2);
  CHECK(idx.overlap(chain) == overlaps{{3, 3}});
  idx.removed(3, std::vector<uint64_t>{0});
  CHECK(idx.blocks() == 1);
  CHECK(idx.overlap(chain).empty());
  std::vector<uint64_t> from5{5, 0};
  CHECK(idx.overlap(from5) == overlaps{{3, 1}});
}

TEST_CASE("the index agrees with a plain map under random events, across 200 workers",
          "[kv_index]") {
  // More workers than one or two bitset words hold, ids far apart, hashes from a small
  // pool so that chains share blocks and removals hit; workers leave and come back.
  kv_index idx;
  reference_index ref;
  uint64_t rng = 7;
  std::vector<uint64_t> pool(3000);
  for (auto& h : pool)
    h = splitmix(rng) % 5 == 0 ? (splitmix(rng) & 0xFF) : splitmix(rng);  // a few tiny ones
  auto some = [&](size_t n) {
    std::vector<uint64_t> v;
    size_t start = splitmix(rng) % pool.size();
    for (size_t i = 0; i < n; ++i)
      v.push_back(pool[(start + i) % pool.size()]);
    return v;
  };
  for (int step = 0; step < 6000; ++step) {
    const worker_id w = static_cast<worker_id>(1000 + (splitmix(rng) % 200) * 7919);
    switch (splitmix(rng) % 10) {
      case 0:
        idx.drop_worker(w);
        ref.drop(w);
        break;
      case 1:
      case 2:
      case 3: {
        auto hs = some(1 + splitmix(rng) % 40);
        idx.removed(w, hs);
        ref.removed(w, hs);
        break;
      }
      default: {
        auto hs = some(1 + splitmix(rng) % 60);
        idx.stored(w, hs);
        ref.stored(w, hs);
      }
    }
    if (step % 100 == 0) {
      REQUIRE(idx.entries() == ref.entries());
      REQUIRE(idx.blocks() == ref.holders.size());
      for (int q = 0; q < 20; ++q) {
        auto chain = some(1 + splitmix(rng) % 80);
        REQUIRE(idx.overlap(chain) == ref.overlap(chain));
      }
    }
  }
  CHECK(idx.entries() == ref.entries());
}

TEST_CASE("1M blocks across 128 workers: overlap, removal and worker loss at scale",
          "[kv_index][scale]") {
  // 4096 conversations of 256 blocks (a 4k-token prompt at 16 tokens per block), each on
  // two workers: 1M distinct blocks, 2M entries.
  constexpr size_t chains = 4096, len = 256, workers = 128;
  kv_index idx;
  uint64_t rng = 42;
  std::vector<std::vector<uint64_t>> chain(chains);
  std::vector<std::pair<worker_id, worker_id>> where(chains);
  for (size_t c = 0; c < chains; ++c) {
    chain[c].resize(len);
    for (auto& h : chain[c])
      h = splitmix(rng) | 1;
    worker_id a = static_cast<worker_id>(splitmix(rng) % workers);
    worker_id b = static_cast<worker_id>((a + 1 + splitmix(rng) % (workers - 1)) % workers);
    where[c] = {a, b};
    idx.stored(a + 100, chain[c]);
    idx.stored(b + 100, chain[c]);
  }
  REQUIRE(idx.blocks() == chains * len);
  REQUIRE(idx.entries() == 2 * chains * len);
  REQUIRE(idx.workers() == workers);
  // Memory per block stays that of one slot (hash + two bitset words) at the load factor.
  const double per_block = static_cast<double>(idx.memory_bytes()) / idx.blocks();
  INFO("bytes per block " << per_block);
  CHECK(per_block <= 24.0 / 0.375 + 1);

  auto sorted = [](worker_id a, worker_id b, uint32_t na, uint32_t nb) {
    overlaps o{{a, na}, {b, nb}};
    std::sort(o.begin(), o.end());
    return o;
  };
  for (size_t c = 0; c < chains; c += 97)
    REQUIRE(idx.overlap(chain[c]) == sorted(where[c].first + 100, where[c].second + 100, len, len));

  // One holder evicts the tail from block 100: it keeps the first 100 blocks.
  const size_t c0 = 5;
  std::vector<uint64_t> tail(chain[c0].begin() + 100, chain[c0].end());
  idx.removed(where[c0].first + 100, tail);
  CHECK(idx.overlap(chain[c0]) == sorted(where[c0].first + 100, where[c0].second + 100, 100, len));
  CHECK(idx.entries() == 2 * chains * len - (len - 100));

  // A worker is lost: every chain it held is now on its other holder only.
  const worker_id lost = where[7].first;
  idx.drop_worker(lost + 100);
  CHECK(idx.workers() == workers - 1);
  size_t entries = 0;
  for (size_t c = 0; c < chains; ++c) {
    const bool a = where[c].first != lost, b = where[c].second != lost;
    entries += (a ? (c == c0 ? 100 : len) : 0) + (b ? len : 0);
    if (c % 31 != 0 && c != c0) continue;
    overlaps want;
    if (a) want.emplace_back(where[c].first + 100, c == c0 ? 100 : len);
    if (b) want.emplace_back(where[c].second + 100, len);
    std::sort(want.begin(), want.end());
    REQUIRE(idx.overlap(chain[c]) == want);
  }
  CHECK(idx.entries() == entries);
  // A prompt that shares only a prefix: the overlap stops where it diverges.
  auto diverged = chain[11];
  diverged[40] ^= 0xABCDEF;
  overlaps want;
  if (where[11].first != lost) want.emplace_back(where[11].first + 100, 40);
  if (where[11].second != lost) want.emplace_back(where[11].second + 100, 40);
  std::sort(want.begin(), want.end());
  CHECK(idx.overlap(diverged) == want);
}

TEST_CASE("holding_all: the workers holding every block of a chunk", "[kv_index][chunks]") {
  kv_index idx;
  const std::vector<uint64_t> chunk{101, 102, 103};
  idx.stored(5, chunk);
  idx.stored(2, chunk);
  idx.stored(9, std::vector<uint64_t>{101, 103});  // a gap: not the whole chunk
  idx.stored(7, std::vector<uint64_t>{102, 103});  // the first block missing
  CHECK(idx.holding_all(chunk) == std::vector<worker_id>{2, 5});
  CHECK(idx.holding_all(std::vector<uint64_t>{103}) == std::vector<worker_id>{2, 5, 7, 9});
  CHECK(idx.holding_all({}).empty());
  CHECK(idx.holding_all(std::vector<uint64_t>{101, 999}).empty());  // a block nobody holds
  // Order does not matter (a chunk's blocks are not a chain from the prompt's start).
  CHECK(idx.holding_all(std::vector<uint64_t>{103, 101}) == std::vector<worker_id>{2, 5, 9});
  // Eviction of one block loses the chunk; a lost worker loses all.
  idx.removed(5, std::vector<uint64_t>{102});
  CHECK(idx.holding_all(chunk) == std::vector<worker_id>{2});
  idx.drop_worker(2);
  CHECK(idx.holding_all(chunk).empty());
}

TEST_CASE("holding_all across more than 64 workers", "[kv_index][chunks]") {
  kv_index idx;
  const std::vector<uint64_t> chunk{7, 8};
  std::vector<worker_id> want;
  for (worker_id w = 1; w <= 150; ++w) {
    idx.stored(w, std::vector<uint64_t>{7});
    if (w % 3 == 0) {
      idx.stored(w, std::vector<uint64_t>{8});
      want.push_back(w);
    }
  }
  CHECK(idx.holding_all(chunk) == want);
}
