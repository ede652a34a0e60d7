#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <set>
#include <stdexcept>
#include <vector>

#include "engine/block_pool.hpp"

using namespace tokenmill;

namespace {
kv_layout small_layout() {
  kv_layout l;
  l.layers = 1;
  l.kv_heads = 1;
  l.head_dim = 8;
  l.block_tokens = 4;
  l.dtype_bytes = 2;
  return l;  // 1 * 2 * 1 * 4 * 8 * 2 = 128 bytes per block
}

/// Snapshot of everything observable about a pool's allocation state.
struct pool_state {
  uint32_t used, free;
  std::vector<bool> in_use;
  bool operator==(const pool_state&) const = default;
};

pool_state state_of(const block_pool& p) {
  pool_state s{p.used(), p.free(), {}};
  for (block_id b = 0; b < p.total(); ++b)
    s.in_use.push_back(p.in_use(b));
  return s;
}
}  // namespace

TEST_CASE("a new pool is empty, zeroed and sized by its layout", "[block_pool]") {
  block_pool pool(small_layout(), 10);
  CHECK(pool.total() == 10);
  CHECK(pool.used() == 0);
  CHECK(pool.free() == 10);
  CHECK(pool.block_bytes() == 128);
  CHECK(pool.block_bytes() == pool.layout().block_bytes());
  CHECK(pool.memory().size() == 10 * 128);
  const auto& cpool = pool;
  CHECK(cpool.memory().size() == 10 * 128);
  CHECK(cpool.memory().data() == reinterpret_cast<const std::byte*>(pool.memory().data()));
  for (block_id b = 0; b < 10; ++b)
    CHECK_FALSE(pool.in_use(b));
  CHECK(std::all_of(pool.memory().begin(), pool.memory().end(),
                    [](std::byte x) { return x == std::byte{0}; }));
}

TEST_CASE("pool memory is 4096-byte aligned and blocks are contiguous", "[block_pool]") {
  block_pool pool(small_layout(), 7);  // 896 bytes: not a multiple of a page
  auto addr = reinterpret_cast<uintptr_t>(pool.memory().data());
  CHECK(addr % 4096 == 0);
  for (block_id b = 0; b < 7; ++b)
    CHECK(pool.block(b) == pool.memory().data() + b * 128);
  const block_pool& cp = pool;
  CHECK(cp.block(3) == pool.block(3));
  // Every byte of every block is writable (the rounding up to a page must not shrink it).
  std::memset(pool.memory().data(), 0xAB, pool.memory().size());
  CHECK(static_cast<uint8_t>(pool.block(6)[127]) == 0xAB);
}

TEST_CASE("a host pool's pages become resident only as blocks are written", "[block_pool]") {
  // 256 blocks of 128 KiB: 32 MiB that a fresh pool must not touch (issue 21: pools are sized
  // from a budget and must not cost resident memory or start-up time until used).
  kv_layout l;
  l.layers = 8;
  l.kv_heads = 2;
  l.head_dim = 128;
  l.block_tokens = 16;
  l.dtype_bytes = 2;
  REQUIRE(l.block_bytes() == 128 * 1024);
  block_pool pool(l, 256);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  REQUIRE(page > 0);
  auto resident = [&](size_t offset, size_t bytes) {
    std::vector<unsigned char> v((bytes + page - 1) / page);
    REQUIRE(::mincore(pool.memory().data() + offset, bytes, v.data()) == 0);
    return static_cast<size_t>(
        std::count_if(v.begin(), v.end(), [](unsigned char c) { return c & 1; }));
  };
  CHECK(resident(0, pool.memory().size()) == 0);
  auto blocks = pool.allocate(2);
  REQUIRE(blocks);
  std::memset(pool.block((*blocks)[1]), 0x5A, pool.block_bytes());
  const size_t block_pages = pool.block_bytes() / static_cast<size_t>(page);
  CHECK(resident(size_t{(*blocks)[1]} * pool.block_bytes(), pool.block_bytes()) == block_pages);
  // Exactly the block's pages; with transparent huge pages set to "always" the kernel may
  // back it with one 2 MiB page, still far from the whole pool.
  const size_t total = resident(0, pool.memory().size());
  CHECK(total >= block_pages);
  CHECK(total <= std::max(block_pages, size_t{2 << 20} / static_cast<size_t>(page)));
}

TEST_CASE("invalid pools are rejected", "[block_pool]") {
  CHECK_THROWS_AS(block_pool(small_layout(), 0), std::invalid_argument);
  auto bad = small_layout();
  bad.head_dim = 0;
  CHECK_THROWS_AS(block_pool(bad, 4), std::invalid_argument);
  bad = small_layout();
  bad.dtype_bytes = 3;
  CHECK_THROWS_AS(block_pool(bad, 4), std::invalid_argument);
}

TEST_CASE("allocate hands out distinct blocks, lowest first, and counts them", "[block_pool]") {
  block_pool pool(small_layout(), 8);
  auto a = pool.allocate(3);
  REQUIRE(a);
  CHECK(*a == std::vector<block_id>{0, 1, 2});
  CHECK(pool.used() == 3);
  CHECK(pool.free() == 5);
  auto b = pool.allocate(2);
  REQUIRE(b);
  CHECK(*b == std::vector<block_id>{3, 4});
  for (block_id id : {0u, 1u, 2u, 3u, 4u})
    CHECK(pool.in_use(id));
  for (block_id id : {5u, 6u, 7u})
    CHECK_FALSE(pool.in_use(id));

  auto none = pool.allocate(0);
  REQUIRE(none);
  CHECK(none->empty());
  CHECK(pool.used() == 5);
}

TEST_CASE("allocate prefers the lowest free indices after releases", "[block_pool]") {
  block_pool pool(small_layout(), 8);
  auto a = pool.allocate(6);  // 0..5
  REQUIRE(a);
  std::vector<block_id> back{4, 1, 3};
  REQUIRE(pool.release(back));
  auto b = pool.allocate(2);
  REQUIRE(b);
  CHECK(*b == std::vector<block_id>{1, 3});
  auto c = pool.allocate(3);
  REQUIRE(c);
  CHECK(*c == std::vector<block_id>{4, 6, 7});
  CHECK(pool.free() == 0);
}

TEST_CASE("exhaustion returns nothing and changes nothing", "[block_pool]") {
  block_pool pool(small_layout(), 4);
  REQUIRE(pool.allocate(3));
  auto before = state_of(pool);
  CHECK_FALSE(pool.allocate(2).has_value());
  CHECK(state_of(pool) == before);
  CHECK_FALSE(pool.allocate(1000).has_value());
  CHECK(state_of(pool) == before);
  auto last = pool.allocate(1);  // exactly the remainder still works
  REQUIRE(last);
  CHECK(*last == std::vector<block_id>{3});
  CHECK(pool.free() == 0);
  CHECK_FALSE(pool.allocate(1).has_value());
  CHECK(pool.used() == 4);
}

TEST_CASE("release returns blocks for reuse", "[block_pool]") {
  block_pool pool(small_layout(), 4);
  auto a = pool.allocate(4);
  REQUIRE(a);
  REQUIRE(pool.release(*a));
  CHECK(pool.used() == 0);
  CHECK(pool.free() == 4);
  for (block_id b = 0; b < 4; ++b)
    CHECK_FALSE(pool.in_use(b));
  auto again = pool.allocate(4);
  REQUIRE(again);
  CHECK(std::set<block_id>(again->begin(), again->end()) == std::set<block_id>{0, 1, 2, 3});
  CHECK(pool.release(std::span<const block_id>{}));  // empty release is a no-op
  CHECK(pool.used() == 4);
}

TEST_CASE("bad releases return false and change nothing", "[block_pool]") {
  block_pool pool(small_layout(), 6);
  auto a = pool.allocate(3);  // 0, 1, 2
  REQUIRE(a);
  auto before = state_of(pool);

  SECTION("double free") {
    std::vector<block_id> one{1};
    REQUIRE(pool.release(one));
    auto after_first = state_of(pool);
    CHECK_FALSE(pool.release(one));
    CHECK(state_of(pool) == after_first);
    // The free list was not corrupted: 1 comes back exactly once.
    auto all = pool.allocate(4);
    REQUIRE(all);
    CHECK(std::count(all->begin(), all->end(), 1u) == 1);
    CHECK_FALSE(pool.allocate(1));
  }
  SECTION("a block that was never allocated") {
    std::vector<block_id> ids{0, 4};
    CHECK_FALSE(pool.release(ids));
    CHECK(state_of(pool) == before);
  }
  SECTION("out of range ids") {
    std::vector<block_id> ids{0, 6};
    CHECK_FALSE(pool.release(ids));
    CHECK(state_of(pool) == before);
    std::vector<block_id> huge{UINT32_MAX};
    CHECK_FALSE(pool.release(huge));
    CHECK(state_of(pool) == before);
    CHECK_FALSE(pool.in_use(6));
    CHECK_FALSE(pool.in_use(UINT32_MAX));
  }
  SECTION("duplicate ids in one call") {
    std::vector<block_id> ids{2, 0, 2};
    CHECK_FALSE(pool.release(ids));
    CHECK(state_of(pool) == before);
    // A later correct release still works and the duplicates did not double-count.
    REQUIRE(pool.release(*a));
    CHECK(pool.used() == 0);
    CHECK(pool.free() == 6);
  }
  SECTION("a bad id after good ones frees none of the good ones") {
    std::vector<block_id> ids{0, 1, 5};
    CHECK_FALSE(pool.release(ids));
    CHECK(state_of(pool) == before);
    CHECK(pool.in_use(0));
    CHECK(pool.in_use(1));
  }
}

TEST_CASE("block_checksum covers every byte of exactly one block", "[block_pool]") {
  block_pool pool(small_layout(), 3);
  auto c0 = block_checksum(pool, 0);
  CHECK(block_checksum(pool, 1) == c0);  // equal (zeroed) contents, equal checksums
  CHECK(block_checksum(pool, 0) == c0);  // deterministic

  SECTION("first byte") {
    pool.block(0)[0] = std::byte{1};
    CHECK(block_checksum(pool, 0) != c0);
  }
  SECTION("last byte") {
    pool.block(0)[pool.block_bytes() - 1] = std::byte{0x80};
    CHECK(block_checksum(pool, 0) != c0);
  }
  SECTION("a byte of a neighbouring block does not count") {
    pool.block(1)[0] = std::byte{7};
    pool.block(2)[0] = std::byte{7};
    CHECK(block_checksum(pool, 0) == c0);
    CHECK(block_checksum(pool, 1) != c0);
    CHECK(block_checksum(pool, 1) == block_checksum(pool, 2));
  }
  SECTION("every single-byte change is detected") {
    for (size_t i = 0; i < pool.block_bytes(); ++i) {
      pool.block(0)[i] = std::byte{0x5A};
      REQUIRE(block_checksum(pool, 0) != c0);
      pool.block(0)[i] = std::byte{0};
    }
    CHECK(block_checksum(pool, 0) == c0);
  }
}

namespace {
/// Memory that claims to be a device's: its address range must never be touched directly
/// (block_checksum and transports go through copy_out/copy_in), which the counters show.
class fake_device_memory final : public pool_memory {
 public:
  explicit fake_device_memory(size_t n) : data(n) {}
  memory_kind kind() const override { return memory_kind::cuda; }
  std::span<std::byte> bytes() override { return data; }
  std::span<const std::byte> bytes() const override { return data; }
  int device() const override { return 3; }
  void copy_out(size_t offset, std::byte* dst, size_t n) const override {
    ++copies_out;
    std::memcpy(dst, data.data() + offset, n);
  }
  void copy_in(size_t offset, const std::byte* src, size_t n) override {
    std::memcpy(data.data() + offset, src, n);
  }
  std::vector<std::byte> data;
  mutable int copies_out = 0;
};
}  // namespace

TEST_CASE("a pool can live in memory the engine supplies", "[block_pool]") {
  auto l = small_layout();
  auto mem = std::make_unique<fake_device_memory>(4 * l.block_bytes());
  auto* raw = mem.get();
  raw->data[2 * l.block_bytes() + 5] = std::byte{7};
  block_pool p(l, 4, std::move(mem));
  CHECK_FALSE(p.host_memory());
  CHECK(p.storage().kind() == memory_kind::cuda);
  CHECK(p.memory().data() == raw->data.data());

  // The checksum of a device block goes through a copy and equals the host one.
  block_pool host(l, 4);
  host.block(2)[5] = std::byte{7};
  CHECK(block_checksum(p, 2) == block_checksum(host, 2));
  CHECK(raw->copies_out == 1);

  // Too little memory for the blocks is refused.
  CHECK_THROWS_WITH(block_pool(l, 4, std::make_unique<fake_device_memory>(3 * l.block_bytes())),
                    Catch::Contains("blocks need"));
}

TEST_CASE("host pool memory is aligned, zeroed and copies in and out", "[block_pool]") {
  auto m = make_host_memory(5000);
  CHECK(m->kind() == memory_kind::host);
  CHECK(m->device() == -1);
  REQUIRE(m->bytes().size() == 5000);
  CHECK(reinterpret_cast<uintptr_t>(m->bytes().data()) % 4096 == 0);
  CHECK(std::all_of(m->bytes().begin(), m->bytes().end(),
                    [](std::byte b) { return b == std::byte{0}; }));
  std::vector<std::byte> in(100, std::byte{9}), out(100);
  m->copy_in(4900, in.data(), in.size());
  m->copy_out(4900, out.data(), out.size());
  CHECK(out == in);
  auto staging = m->make_host_staging(64);
  CHECK(staging->kind() == memory_kind::host);
  CHECK(staging->bytes().size() == 64);
  CHECK(memory_kind_name(memory_kind::cuda) == "cuda");
}
