#include <catch2/catch.hpp>

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
