#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "engine/detail/layout_match.hpp"
#include "engine/kv_layout.hpp"
#include "test_result.hpp"

using namespace tokenmill;

namespace {
kv_layout make_layout(uint32_t layers, uint32_t kv_heads, uint32_t head_dim, uint32_t block_tokens,
                      uint32_t dtype_bytes) {
  kv_layout l;
  l.layers = layers;
  l.kv_heads = kv_heads;
  l.head_dim = head_dim;
  l.block_tokens = block_tokens;
  l.dtype_bytes = dtype_bytes;
  return l;
}
}  // namespace

TEST_CASE("default kv layout is valid and sized as documented", "[kv_layout]") {
  kv_layout l;
  CHECK(l.validate().ok());
  // 2 layers * (K,V) * 2 heads * 16 tokens * 64 dims * 2 bytes
  CHECK(l.block_bytes() == 2u * 2 * 2 * 16 * 64 * 2);
}

TEST_CASE("block_bytes multiplies every dimension", "[kv_layout]") {
  CHECK(make_layout(1, 1, 1, 1, 2).block_bytes() == 4);
  CHECK(make_layout(1, 1, 1, 1, 4).block_bytes() == 8);
  CHECK(make_layout(3, 5, 7, 11, 4).block_bytes() == 3u * 2 * 5 * 7 * 11 * 4);
  CHECK(make_layout(32, 8, 128, 16, 2).block_bytes() == 32u * 2 * 8 * 128 * 16 * 2);
  // Large dimensions must not overflow 32-bit arithmetic.
  CHECK(make_layout(128, 64, 256, 256, 4).block_bytes() == size_t{128} * 2 * 64 * 256 * 256 * 4);
}

TEST_CASE("offset follows [layer][K|V][kv_head][token][head_dim]", "[kv_layout]") {
  auto l = make_layout(3, 2, 8, 4, 2);
  size_t vec = 8 * 2;
  CHECK(l.offset(0, 0, 0, 0) == 0);
  CHECK(l.offset(0, 0, 0, 1) == vec);                    // next token slot
  CHECK(l.offset(0, 0, 1, 0) == 4 * vec);                // next head: after all slots
  CHECK(l.offset(0, 1, 0, 0) == 2 * 4 * vec);            // V: after all K heads
  CHECK(l.offset(1, 0, 0, 0) == 2 * 2 * 4 * vec);        // next layer: after K and V
  CHECK(l.offset(2, 1, 1, 3) == l.block_bytes() - vec);  // the last vector ends the block
}

TEST_CASE("offsets are unique, non-overlapping and tile the block exactly", "[kv_layout]") {
  auto l = GENERATE(make_layout(1, 1, 1, 1, 2), make_layout(2, 2, 64, 16, 2),
                    make_layout(3, 4, 5, 7, 4), make_layout(4, 1, 16, 3, 2));
  size_t vec = size_t{l.head_dim} * l.dtype_bytes;
  std::vector<size_t> offsets;
  for (uint32_t layer = 0; layer < l.layers; ++layer)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t head = 0; head < l.kv_heads; ++head)
        for (uint32_t slot = 0; slot < l.block_tokens; ++slot) {
          size_t off = l.offset(layer, kv, head, slot);
          CHECK(off % vec == 0);
          CHECK(off + vec <= l.block_bytes());
          offsets.push_back(off);
        }
  REQUIRE(offsets.size() * vec == l.block_bytes());
  std::sort(offsets.begin(), offsets.end());
  for (size_t i = 0; i < offsets.size(); ++i)
    REQUIRE(offsets[i] == i * vec);
}

TEST_CASE("blocks_for rounds up", "[kv_layout]") {
  auto l = make_layout(1, 1, 1, 16, 2);
  CHECK(l.blocks_for(0) == 0);
  CHECK(l.blocks_for(1) == 1);
  CHECK(l.blocks_for(15) == 1);
  CHECK(l.blocks_for(16) == 1);
  CHECK(l.blocks_for(17) == 2);
  CHECK(l.blocks_for(32) == 2);
  CHECK(l.blocks_for(33) == 3);
  auto one = make_layout(1, 1, 1, 1, 2);
  CHECK(one.blocks_for(0) == 0);
  CHECK(one.blocks_for(7) == 7);
}

TEST_CASE("blocks_for does not overflow near the 32-bit limit", "[kv_layout]") {
  constexpr uint32_t max = std::numeric_limits<uint32_t>::max();
  auto l = make_layout(1, 1, 1, 16, 2);
  CHECK(l.blocks_for(max) == max / 16 + 1);
  CHECK(l.blocks_for(max - 15) == (uint64_t{max} - 15 + 15) / 16);
  auto one = make_layout(1, 1, 1, 1, 2);
  CHECK(one.blocks_for(max) == max);
}

TEST_CASE("blocks_for with a zero block size does not crash", "[kv_layout]") {
  auto l = make_layout(1, 1, 1, 0, 2);
  CHECK_FALSE(l.validate().ok());
  CHECK(l.blocks_for(10) == 0);
}

TEST_CASE("validate names what is wrong", "[kv_layout]") {
  CHECK(make_layout(1, 1, 1, 1, 2).validate().ok());
  CHECK(make_layout(1, 1, 1, 1, 4).validate().ok());

  auto zero_layers = test::error_text(make_layout(0, 2, 64, 16, 2).validate());
  CHECK_THAT(zero_layers, Catch::Contains("zero") && Catch::Contains("layers=0"));
  CHECK_THAT(test::error_text(make_layout(2, 0, 64, 16, 2).validate()),
             Catch::Contains("kv_heads=0"));
  CHECK_THAT(test::error_text(make_layout(2, 2, 0, 16, 2).validate()),
             Catch::Contains("head_dim=0"));
  CHECK_THAT(test::error_text(make_layout(2, 2, 64, 0, 2).validate()),
             Catch::Contains("block_tokens=0"));

  for (uint32_t bad : {0u, 1u, 3u, 8u}) {
    auto err = test::error_text(make_layout(2, 2, 64, 16, bad).validate());
    CHECK_THAT(err, Catch::Contains("dtype"));
    CHECK_THAT(err, Catch::Contains(std::to_string(bad)));
  }
}

TEST_CASE("a pool made for another layout is refused, naming the engine and both layouts",
          "[kv_layout]") {
  const kv_layout e = make_layout(2, 4, 8, 16, 2);
  CHECK(detail::check_layout_match(e, e, "cpu engine"));
  const std::vector<kv_layout> others{make_layout(3, 4, 8, 16, 2), make_layout(2, 2, 8, 16, 2),
                                      make_layout(2, 4, 16, 16, 2), make_layout(2, 4, 8, 32, 2),
                                      make_layout(2, 4, 8, 16, 4)};
  for (const auto& p : others) {
    auto r = detail::check_layout_match(p, e, "cpu engine");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::invalid_request);
    CHECK_THAT(r.error().message, Catch::StartsWith("cpu engine: block pool layout"));
    CHECK_THAT(r.error().message, Catch::Contains("does not match the engine's (2, 4, 8, 16, 2)"));
  }
}
