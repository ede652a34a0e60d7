#include <catch2/catch.hpp>

#include <cstring>
#include <optional>
#include <vector>

#include "transport/kv_transport.hpp"

using namespace tokenmill;

namespace {

constexpr size_t kBlock = 32;

/// A pool-like buffer of `blocks` blocks, block b filled with bytes (seed + b) ^ offset.
std::vector<std::byte> make_buffer(size_t blocks, uint8_t seed) {
  std::vector<std::byte> buf(blocks * kBlock);
  for (size_t b = 0; b < blocks; ++b)
    for (size_t i = 0; i < kBlock; ++i)
      buf[b * kBlock + i] = static_cast<std::byte>(static_cast<uint8_t>(seed + b) ^ i);
  return buf;
}

bool block_equals(const std::vector<std::byte>& a, block_id ab, const std::vector<std::byte>& b,
                  block_id bb) {
  return std::memcmp(a.data() + ab * kBlock, b.data() + bb * kBlock, kBlock) == 0;
}

/// Captures the completion and counts how often it ran.
struct capture {
  int calls = 0;
  error_info err;
  kv_payload payload;
  kv_transport::completion fn() {
    return [this](error_info e, kv_payload p) {
      ++calls;
      err = std::move(e);
      payload = std::move(p);
    };
  }
};

}  // namespace

TEST_CASE("inline transport registers a pool", "[transport][inline]") {
  inline_transport t;
  CHECK(t.name() == "inline");
  auto mem = make_buffer(10, 0);
  auto d = t.register_pool(42, mem, kBlock);
  CHECK(d.owner == 42);
  CHECK(d.block_bytes == kBlock);
  CHECK(d.num_blocks == 10);
  CHECK(d.remote_key.empty());
  CHECK(d.worker_address.empty());

  // A trailing partial block is not a block.
  std::vector<std::byte> odd(10 * kBlock + 5);
  CHECK(t.register_pool(1, odd, kBlock).num_blocks == 10);
  CHECK(t.register_pool(1, mem, 0).num_blocks == 0);
}

TEST_CASE("write then deliver copies blocks into the right destinations", "[transport][inline]") {
  inline_transport t;
  auto src_mem = make_buffer(8, 10);
  auto dst_mem = make_buffer(6, 200);
  const auto dst_orig = dst_mem;
  t.register_pool(1, src_mem, kBlock);
  auto peer = t.register_pool(2, dst_mem, kBlock);

  std::vector<block_id> src{7, 0, 3};
  std::vector<block_id> dst{1, 5, 2};
  capture c;
  t.write(src_mem, kBlock, src, peer, dst, c.fn());
  REQUIRE(c.calls == 1);
  REQUIRE_FALSE(c.err);
  CHECK(c.err.message.empty());
  CHECK(c.payload.dst_blocks == dst);
  REQUIRE(c.payload.bytes.size() == 3 * kBlock);

  auto err = t.deliver(c.payload, dst_mem, kBlock);
  REQUIRE_FALSE(err);
  for (size_t i = 0; i < src.size(); ++i)
    CHECK(block_equals(dst_mem, dst[i], src_mem, src[i]));
  // Blocks not named in the transfer are untouched.
  for (block_id b : {0u, 3u, 4u})
    CHECK(block_equals(dst_mem, b, dst_orig, b));
  // The source is not modified.
  CHECK(src_mem == make_buffer(8, 10));
}

TEST_CASE("the payload is a snapshot taken at write time", "[transport][inline]") {
  inline_transport t;
  auto src_mem = make_buffer(2, 1);
  auto dst_mem = make_buffer(2, 100);
  auto peer = t.register_pool(2, dst_mem, kBlock);
  std::vector<block_id> ids{0};
  capture c;
  t.write(src_mem, kBlock, ids, peer, ids, c.fn());
  REQUIRE_FALSE(c.err);
  const auto expected = std::vector<std::byte>(src_mem.begin(), src_mem.begin() + kBlock);
  src_mem[0] = std::byte{0xEE};  // the sender reuses its block afterwards
  REQUIRE_FALSE(t.deliver(c.payload, dst_mem, kBlock));
  CHECK(std::memcmp(dst_mem.data(), expected.data(), kBlock) == 0);
}

TEST_CASE("an empty write completes with an empty payload", "[transport][inline]") {
  inline_transport t;
  auto src_mem = make_buffer(2, 1);
  auto dst_mem = make_buffer(2, 100);
  auto peer = t.register_pool(2, dst_mem, kBlock);
  capture c;
  t.write(src_mem, kBlock, {}, peer, {}, c.fn());
  CHECK(c.calls == 1);
  CHECK_FALSE(c.err);
  CHECK(c.payload.dst_blocks.empty());
  CHECK(c.payload.bytes.empty());
  CHECK_FALSE(t.deliver(c.payload, dst_mem, kBlock));
  CHECK(dst_mem == make_buffer(2, 100));
}

TEST_CASE("bad writes report an error exactly once and carry no data", "[transport][inline]") {
  inline_transport t;
  auto src_mem = make_buffer(4, 1);
  auto dst_mem = make_buffer(4, 100);
  auto peer = t.register_pool(2, dst_mem, kBlock);
  capture c;

  SECTION("mismatched source and destination counts") {
    std::vector<block_id> src{0, 1}, dst{0};
    t.write(src_mem, kBlock, src, peer, dst, c.fn());
    CHECK_THAT(c.err.message, Catch::Contains("2 source blocks for 1 destinations"));
  }
  SECTION("source block out of range") {
    std::vector<block_id> src{0, 4}, dst{0, 1};
    t.write(src_mem, kBlock, src, peer, dst, c.fn());
    CHECK_THAT(c.err.message, Catch::Contains("out of range"));
  }
  SECTION("destination block out of range") {
    std::vector<block_id> src{0, 1}, dst{3, 4};
    t.write(src_mem, kBlock, src, peer, dst, c.fn());
    CHECK_THAT(c.err.message, Catch::Contains("out of range"));
  }
  SECTION("block size mismatch") {
    std::vector<block_id> ids{0};
    auto other = peer;
    other.block_bytes = kBlock * 2;
    t.write(src_mem, kBlock, ids, other, ids, c.fn());
    CHECK_THAT(c.err.message, Catch::Contains("does not match"));
  }
  SECTION("zero block size") {
    std::vector<block_id> ids{0};
    auto zero = t.register_pool(2, dst_mem, 0);
    t.write(src_mem, 0, ids, zero, ids, c.fn());
  }
  CHECK(c.calls == 1);
  CHECK(c.err);
  CHECK(c.err.code != errc::ok);
  CHECK_FALSE(c.err.message.empty());
  CHECK(c.payload.dst_blocks.empty());
  CHECK(c.payload.bytes.empty());
  CHECK(dst_mem == make_buffer(4, 100));
}

TEST_CASE("bad payloads are rejected and nothing is written", "[transport][inline]") {
  inline_transport t;
  auto src_mem = make_buffer(4, 1);
  auto dst_mem = make_buffer(4, 100);
  const auto orig = dst_mem;
  auto peer = t.register_pool(2, dst_mem, kBlock);
  std::vector<block_id> src{0, 1}, dst{2, 3};
  capture c;
  t.write(src_mem, kBlock, src, peer, dst, c.fn());
  REQUIRE_FALSE(c.err);
  kv_payload p = c.payload;

  SECTION("too few bytes") {
    p.bytes.pop_back();
    auto err = t.deliver(p, dst_mem, kBlock);
    CHECK(err.code == errc::kv_corrupt);
    CHECK_THAT(err.message, Catch::Contains("63 B for 2 blocks"));
  }
  SECTION("too many bytes") {
    p.bytes.push_back(0);
    CHECK(t.deliver(p, dst_mem, kBlock).code == errc::kv_corrupt);
  }
  SECTION("more blocks than bytes") {
    p.dst_blocks.push_back(0);
    CHECK(t.deliver(p, dst_mem, kBlock).code == errc::kv_corrupt);
  }
  SECTION("a block past the local pool, after a valid one") {
    p.dst_blocks = {0, 4};
    auto err = t.deliver(p, dst_mem, kBlock);
    CHECK(err.code == errc::kv_corrupt);
    CHECK_THAT(err.message, Catch::Contains("block 4"));
  }
  SECTION("the receiver's block size differs") {
    CHECK(t.deliver(p, dst_mem, kBlock * 2).code == errc::kv_corrupt);
  }
  SECTION("a zero receiver block size") {
    CHECK(t.deliver(p, dst_mem, 0));
  }
  CHECK(dst_mem == orig);
  // The untouched payload still delivers fine afterwards.
  REQUIRE_FALSE(t.deliver(c.payload, dst_mem, kBlock));
  CHECK(block_equals(dst_mem, 2, src_mem, 0));
  CHECK(block_equals(dst_mem, 3, src_mem, 1));
}
