#include <catch2/catch.hpp>

#include <cstdint>
#include <set>
#include <vector>

#include "engine/block_hash.hpp"

using namespace tokenmill;

namespace {
std::vector<token_id> iota_tokens(size_t n, token_id start = 100) {
  std::vector<token_id> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = start + static_cast<token_id>(i);
  return v;
}
}  // namespace

TEST_CASE("one hash per full block and none for a partial trailing block", "[block_hash]") {
  CHECK(block_hashes(iota_tokens(0), 4).empty());
  CHECK(block_hashes(iota_tokens(3), 4).empty());
  CHECK(block_hashes(iota_tokens(4), 4).size() == 1);
  CHECK(block_hashes(iota_tokens(7), 4).size() == 1);
  CHECK(block_hashes(iota_tokens(8), 4).size() == 2);
  CHECK(block_hashes(iota_tokens(33), 16).size() == 2);
  CHECK(block_hashes(iota_tokens(5), 1).size() == 5);
}

TEST_CASE("block_tokens 0 gives no hashes", "[block_hash]") {
  CHECK(block_hashes(iota_tokens(10), 0).empty());
  CHECK(block_hashes(iota_tokens(0), 0).empty());
}

TEST_CASE("hashes are deterministic", "[block_hash]") {
  auto t = iota_tokens(64);
  CHECK(block_hashes(t, 16) == block_hashes(t, 16));
  CHECK(block_hashes(t, 16, 99) == block_hashes(t, 16, 99));
}

TEST_CASE("trailing tokens of a partial block do not change full-block hashes", "[block_hash]") {
  auto t = iota_tokens(32);
  auto full = block_hashes(t, 16);
  auto longer = t;
  longer.push_back(5);
  longer.push_back(6);
  CHECK(block_hashes(longer, 16) == full);
}

TEST_CASE("equal prefixes give equal leading hashes", "[block_hash]") {
  auto a = iota_tokens(64);
  auto b = a;
  for (size_t i = 40; i < b.size(); ++i)
    b[i] = -b[i];  // diverge inside block 2
  auto ha = block_hashes(a, 16);
  auto hb = block_hashes(b, 16);
  REQUIRE(ha.size() == 4);
  REQUIRE(hb.size() == 4);
  CHECK(ha[0] == hb[0]);
  CHECK(ha[1] == hb[1]);
  CHECK(ha[2] != hb[2]);
  CHECK(ha[3] != hb[3]);

  // A shorter prompt with the same prefix shares its hashes.
  std::vector<token_id> prefix(a.begin(), a.begin() + 32);
  auto hp = block_hashes(prefix, 16);
  REQUIRE(hp.size() == 2);
  CHECK(hp[0] == ha[0]);
  CHECK(hp[1] == ha[1]);
}

TEST_CASE("a change in block i changes hashes i.. but none before i", "[block_hash]") {
  constexpr uint32_t bt = 8;
  auto base = iota_tokens(bt * 6);
  auto hb = block_hashes(base, bt);
  REQUIRE(hb.size() == 6);
  for (size_t i = 0; i < 6; ++i) {
    for (uint32_t within : {0u, bt / 2, bt - 1}) {
      auto t = base;
      t[i * bt + within] += 1;
      auto h = block_hashes(t, bt);
      REQUIRE(h.size() == 6);
      for (size_t j = 0; j < i; ++j)
        CHECK(h[j] == hb[j]);
      for (size_t j = i; j < 6; ++j)
        CHECK(h[j] != hb[j]);
    }
  }
}

TEST_CASE("the chain makes position matter: equal blocks at different depths differ",
          "[block_hash]") {
  // Two identical blocks in a row: the second hash depends on the first, so they differ.
  std::vector<token_id> t = {1, 2, 3, 4, 1, 2, 3, 4};
  auto h = block_hashes(t, 4);
  REQUIRE(h.size() == 2);
  CHECK(h[0] != h[1]);
  // Swapping two blocks changes both hashes.
  std::vector<token_id> u = {5, 6, 7, 8, 1, 2, 3, 4};
  std::vector<token_id> v = {1, 2, 3, 4, 5, 6, 7, 8};
  auto hu = block_hashes(u, 4);
  auto hv = block_hashes(v, 4);
  CHECK(hu[0] != hv[0]);
  CHECK(hu[1] != hv[1]);
  CHECK(hv[0] == h[0]);
}

TEST_CASE("the block size is part of the hash", "[block_hash]") {
  auto t = iota_tokens(16);
  auto h8 = block_hashes(t, 8);
  auto h16 = block_hashes(t, 16);
  REQUIRE(h8.size() == 2);
  REQUIRE(h16.size() == 1);
  CHECK(h16[0] != h8[0]);
  CHECK(h16[0] != h8[1]);
}

TEST_CASE("the seed changes every hash", "[block_hash]") {
  auto t = iota_tokens(64);
  auto h0 = block_hashes(t, 16);
  auto h1 = block_hashes(t, 16, 1);
  auto h2 = block_hashes(t, 16, 0xdeadbeef);
  REQUIRE(h0.size() == 4);
  REQUIRE(h1.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(h0[i] != h1[i]);
    CHECK(h0[i] != h2[i]);
    CHECK(h1[i] != h2[i]);
  }
  CHECK(block_hashes(t, 16, 0) == h0);  // default seed is 0
}

TEST_CASE("distinct prompts give distinct hashes", "[block_hash]") {
  std::set<uint64_t> seen;
  size_t total = 0;
  for (token_id start = 0; start < 200; ++start) {
    for (auto h : block_hashes(iota_tokens(32, start), 16)) {
      seen.insert(h);
      ++total;
    }
  }
  CHECK(seen.size() == total);
}

TEST_CASE("chunk hashes depend on the chunk's own tokens, not on its position", "[block_hash]") {
  auto doc = iota_tokens(37, 500);  // 2 full blocks of 16 and a partial one
  auto h = chunk_block_hashes(doc, 16);
  REQUIRE(h.size() == 3);
  // The same document after two different prefixes: same chunk hashes.
  for (size_t before : {0u, 5u, 100u}) {
    auto prompt = iota_tokens(before, 7);
    prompt.insert(prompt.end(), doc.begin(), doc.end());
    std::span<const token_id> chunk(prompt.data() + before, doc.size());
    CHECK(chunk_block_hashes(chunk, 16) == h);
  }
  // Distinct from the prefix chain of the same tokens, from another base position, from a
  // one-token-shorter chunk, and from a change in the last (partial) block.
  auto prefix = block_hashes(doc, 16);
  CHECK(prefix[0] != h[0]);
  CHECK(chunk_block_hashes(doc, 16, 64)[0] != h[0]);
  std::vector<token_id> shorter(doc.begin(), doc.end() - 1);
  CHECK(chunk_block_hashes(shorter, 16)[0] != h[0]);
  auto changed = doc;
  changed.back() += 1;
  auto hc = chunk_block_hashes(changed, 16);
  CHECK(hc[0] == h[0]);
  CHECK(hc[1] == h[1]);
  CHECK(hc[2] != h[2]);
  CHECK(chunk_block_hashes({}, 16).empty());
  CHECK(chunk_block_hashes(doc, 0).empty());
  CHECK(std::set<uint64_t>(h.begin(), h.end()).size() == 3);
}
