#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/sim_engine.hpp"
#include "test_result.hpp"

using namespace tokenmill;

namespace {

/// A tiny layout and zero modelled cost, so that tests run as fast as the CPU allows.
sim_config fast_config() {
  sim_config c;
  c.prefill_ns_per_token = 0;
  c.prefill_base_ns = 0;
  c.decode_base_ns = 0;
  c.decode_per_seq_ns = 0;
  c.decode_per_ctx_token_ns = 0;
  c.vocab_size = 1000;
  c.max_context = 256;
  c.layout.layers = 2;
  c.layout.kv_heads = 2;
  c.layout.head_dim = 4;
  c.layout.block_tokens = 4;
  c.layout.dtype_bytes = 2;
  return c;
}

std::vector<token_id> prompt_of(size_t n, token_id start = 300) {
  std::vector<token_id> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = start + static_cast<token_id>((i * 13) % 200);
  return v;
}

/// Runs a whole prompt as one chunk; returns the sampled token.
token_id prefill_all(sim_engine& e, block_pool& pool, std::span<const token_id> tokens,
                     std::span<const block_id> blocks, sampling_params s = {}) {
  prefill_chunk c;
  c.tokens = tokens;
  c.begin = 0;
  c.end = static_cast<uint32_t>(tokens.size());
  c.blocks = blocks;
  c.sampling = s;
  auto out = test::value_or_fail(e.prefill(pool, std::span<const prefill_chunk>(&c, 1)));
  REQUIRE(out.size() == 1);
  return out[0];
}

}  // namespace

TEST_CASE("sim engine describes its model", "[sim_engine]") {
  auto cfg = fast_config();
  sim_engine e(cfg);
  CHECK(e.info().name == "sim");
  CHECK(e.info().vocab_size == 1000);
  CHECK(e.info().max_context == 256);
  CHECK(e.info().layout.block_bytes() == cfg.layout.block_bytes());
  CHECK(e.info().layout.head_dim == 4);
  CHECK(e.config().vocab_size == 1000);
}

TEST_CASE("invalid sim configs throw", "[sim_engine]") {
  auto cfg = fast_config();
  SECTION("vocab too small for the word ids") {
    cfg.vocab_size = static_cast<uint32_t>(sim_engine::first_word_id);
    CHECK_THROWS_AS(sim_engine(cfg), std::invalid_argument);
    cfg.vocab_size = 0;
    CHECK_THROWS_AS(sim_engine(cfg), std::invalid_argument);
    cfg.vocab_size = static_cast<uint32_t>(sim_engine::first_word_id) + 1;
    CHECK_NOTHROW(sim_engine(cfg));
  }
  SECTION("bad layout") {
    cfg.layout.layers = 0;
    CHECK_THROWS_AS(sim_engine(cfg), std::invalid_argument);
    cfg = fast_config();
    cfg.layout.dtype_bytes = 1;
    CHECK_THROWS_AS(sim_engine(cfg), std::invalid_argument);
  }
  SECTION("non-positive or non-finite slowdown") {
    for (double s : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
      cfg.slowdown = s;
      CHECK_THROWS_AS(sim_engine(cfg), std::invalid_argument);
    }
    cfg.slowdown = 0.001;
    CHECK_NOTHROW(sim_engine(cfg));
  }
}

TEST_CASE("modelled costs", "[sim_engine]") {
  sim_config cfg;
  cfg.prefill_ns_per_token = 1000;
  cfg.prefill_base_ns = 50'000;
  cfg.decode_base_ns = 2'000'000;
  cfg.decode_per_seq_ns = 10'000;
  cfg.decode_per_ctx_token_ns = 3;
  sim_engine e(cfg);
  CHECK(e.prefill_cost_ns(0) == 50'000);
  CHECK(e.prefill_cost_ns(100) == 50'000 + 100'000);
  CHECK(e.decode_cost_ns(0, 0) == 2'000'000);
  CHECK(e.decode_cost_ns(4, 1000) == 2'000'000 + 40'000 + 3'000);

  cfg.slowdown = 2.5;
  sim_engine slow(cfg);
  CHECK(slow.prefill_cost_ns(100) == 375'000);
  CHECK(slow.decode_cost_ns(4, 1000) == 5'107'500);
  cfg.slowdown = 0.5;
  sim_engine fast(cfg);
  CHECK(fast.prefill_cost_ns(100) == 75'000);
  CHECK(fast.decode_cost_ns(1, 0) == 1'005'000);

  CHECK(sim_engine(fast_config()).prefill_cost_ns(1'000'000) == 0);
  CHECK(sim_engine(fast_config()).decode_cost_ns(64, 100'000) == 0);
}

TEST_CASE("prefill writes KV that check_kv accepts", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto prompt = prompt_of(10);  // 3 blocks of 4, last one partial
  auto blocks = pool.allocate(3);
  REQUIRE(blocks);
  auto first = prefill_all(e, pool, prompt, *blocks);
  CHECK(first >= sim_engine::first_word_id);
  CHECK(first < 1000);
  CHECK(first == e.next_token(prompt, {}));
  CHECK(e.check_kv(pool, prompt, *blocks, 0, 10).ok());
  CHECK(e.check_kv(pool, prompt, *blocks, 3, 7).ok());
  CHECK(e.check_kv(pool, prompt, *blocks, 5, 5).ok());  // empty range

  // A position never written (slot 10 of block 2) does not check out.
  std::vector<token_id> longer = prompt;
  longer.push_back(400);
  CHECK_FALSE(e.check_kv(pool, longer, *blocks, 0, 11).ok());
  // Nor do other tokens at the same positions.
  auto other = prompt;
  other[6] += 1;
  auto err = test::error_text(e.check_kv(pool, other, *blocks, 0, 10));
  CHECK_THAT(err, Catch::Contains("position 6"));
}

TEST_CASE("the block table decides where KV lands", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto prompt = prompt_of(8);
  std::vector<block_id> table{9, 2};  // non-contiguous, descending
  prefill_all(e, pool, prompt, table);
  CHECK(e.check_kv(pool, prompt, table, 0, 8).ok());
  // Blocks outside the table were not touched.
  for (block_id b : {0u, 1u, 3u, 8u, 10u}) {
    auto bytes = std::span<const std::byte>(pool.block(b), pool.block_bytes());
    CHECK(std::all_of(bytes.begin(), bytes.end(), [](std::byte x) { return x == std::byte{0}; }));
  }
}

TEST_CASE("chunked prefill gives the same KV and token as one chunk", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto prompt = prompt_of(13);
  auto whole = pool.allocate(4);
  auto chunked = pool.allocate(4);
  REQUIRE(whole);
  REQUIRE(chunked);
  auto t_whole = prefill_all(e, pool, prompt, *whole);

  // Chunks that do not align with blocks: [0,3) [3,9) [9,13).
  std::vector<token_id> outs;
  for (auto [b, en] : {std::pair<uint32_t, uint32_t>{0, 3}, {3, 9}, {9, 13}}) {
    prefill_chunk c{prompt, b, en, *chunked, {}, {}};
    auto o = test::value_or_fail(e.prefill(pool, std::span<const prefill_chunk>(&c, 1)));
    REQUIRE(o.size() == 1);
    outs.push_back(o[0]);
    CHECK(e.check_kv(pool, prompt, *chunked, 0, en).ok());
  }
  CHECK(outs.back() == t_whole);
  CHECK(e.check_kv(pool, prompt, *chunked, 0, 13).ok());
  for (size_t i = 0; i < 4; ++i)
    CHECK(std::memcmp(pool.block((*whole)[i]), pool.block((*chunked)[i]), pool.block_bytes()) == 0);
  // Intermediate chunks sample after their own last position.
  CHECK(outs[0] == e.next_token(std::span<const token_id>(prompt).first(3), {}));
}

TEST_CASE("a batch of chunks from several prompts", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto p1 = prompt_of(6, 300);
  auto p2 = prompt_of(9, 500);
  auto b1 = pool.allocate(2);
  auto b2 = pool.allocate(3);
  REQUIRE(b1);
  REQUIRE(b2);
  std::vector<prefill_chunk> batch{{p1, 0, 6, *b1, {}, {}}, {p2, 0, 9, *b2, {}, {}}};
  auto out = test::value_or_fail(e.prefill(pool, batch));
  REQUIRE(out.size() == 2);
  CHECK(out[0] == e.next_token(p1, {}));
  CHECK(out[1] == e.next_token(p2, {}));
  CHECK(e.check_kv(pool, p1, *b1, 0, 6).ok());
  CHECK(e.check_kv(pool, p2, *b2, 0, 9).ok());
  CHECK(test::value_or_fail(e.prefill(pool, std::span<const prefill_chunk>{})).empty());
}

TEST_CASE("a corrupted byte is reported with its block", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto prompt = prompt_of(12);
  std::vector<block_id> table{5, 6, 7};
  prefill_all(e, pool, prompt, table);
  REQUIRE(e.check_kv(pool, prompt, table, 0, 12).ok());

  size_t byte = GENERATE(0, 17, 63);  // somewhere inside the block
  REQUIRE(byte < pool.block_bytes());
  pool.block(6)[byte] ^= std::byte{0x01};
  auto err = test::error_text(e.check_kv(pool, prompt, table, 0, 12));
  CHECK_THAT(err, Catch::Contains("block 6") && Catch::Contains("table index 1"));
  CHECK(e.check_kv(pool, prompt, table, 0, 12).error().code == errc::kv_corrupt);
  // Ranges that do not touch the corrupted block still check out.
  CHECK(e.check_kv(pool, prompt, table, 0, 4).ok());
  CHECK(e.check_kv(pool, prompt, table, 8, 12).ok());
}

TEST_CASE("swapping two blocks in the block table fails check_kv", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto prompt = prompt_of(12);
  std::vector<block_id> table{3, 4, 5};
  prefill_all(e, pool, prompt, table);
  std::vector<block_id> swapped{3, 5, 4};
  auto err = test::error_text(e.check_kv(pool, prompt, swapped, 0, 12));
  CHECK_FALSE(err.empty());
  CHECK_THAT(err, Catch::Contains("block 5"));
  // Even with identical tokens in each block, positions make the contents differ.
  std::vector<token_id> same(8, 400);
  std::vector<block_id> t2{10, 11};
  prefill_all(e, pool, same, t2);
  REQUIRE(e.check_kv(pool, same, t2, 0, 8).ok());
  std::vector<block_id> t2s{11, 10};
  CHECK_FALSE(e.check_kv(pool, same, t2s, 0, 8).ok());
}

TEST_CASE("check_kv reports positions past the block table or the tokens", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto prompt = prompt_of(8);
  std::vector<block_id> table{0, 1};
  prefill_all(e, pool, prompt, table);
  std::vector<block_id> short_table{0};
  CHECK_THAT(test::error_text(e.check_kv(pool, prompt, short_table, 0, 8)),
             Catch::Contains("past the block table"));
  CHECK_FALSE(e.check_kv(pool, prompt, table, 0, 9).ok());
  std::vector<token_id> few(prompt.begin(), prompt.begin() + 5);
  CHECK_FALSE(e.check_kv(pool, few, table, 0, 8).ok());
  CHECK(e.check_kv(pool, few, table, 0, 5).ok());
}

TEST_CASE("prefill past the block table is refused before anything is written", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto prompt = prompt_of(9);
  std::vector<block_id> table{0, 1};  // room for 8
  prefill_chunk c{prompt, 0, 9, table, {}, {}};
  auto out = e.prefill(pool, std::span<const prefill_chunk>(&c, 1));
  REQUIRE_FALSE(out);
  CHECK(out.error().code == errc::invalid_request);
  CHECK_THAT(out.error().message, Catch::Contains("position 8 is past the block table"));
  CHECK(std::all_of(pool.block(0), pool.block(0) + pool.block_bytes(),
                    [](std::byte b) { return b == std::byte{0}; }));

  decode_seq d{prompt, table, {}, {}};
  auto next = e.decode(pool, std::span<const decode_seq>(&d, 1));
  REQUIRE_FALSE(next);
  CHECK(next.error().code == errc::invalid_request);
  CHECK_THAT(next.error().message, Catch::Contains("position 8 is past the block table"));
}

TEST_CASE("decode writes position n-1 and check_kv accepts it", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto ctx = prompt_of(7);
  auto blocks = pool.allocate(3);
  REQUIRE(blocks);
  ctx.push_back(prefill_all(e, pool, ctx, *blocks));  // 8 tokens, KV for 7
  REQUIRE(e.check_kv(pool, ctx, *blocks, 0, 7).ok());
  CHECK_FALSE(e.check_kv(pool, ctx, *blocks, 7, 8).ok());

  for (int step = 0; step < 4; ++step) {
    decode_seq s{ctx, *blocks, {}, {}};
    auto out = test::value_or_fail(e.decode(pool, std::span<const decode_seq>(&s, 1)));
    REQUIRE(out.size() == 1);
    CHECK(out[0] == e.next_token(ctx, {}));
    CHECK(out[0] >= sim_engine::first_word_id);
    CHECK(out[0] < 1000);
    auto n = static_cast<uint32_t>(ctx.size());
    CHECK(e.check_kv(pool, ctx, *blocks, 0, n).ok());
    ctx.push_back(out[0]);
  }
  CHECK(ctx.size() == 12);
  // The decoded KV equals what one prefill of the whole context writes.
  auto again = pool.allocate(3);
  REQUIRE(again);
  prefill_all(e, pool, std::span<const token_id>(ctx).first(11), *again);
  for (size_t i = 0; i < 3; ++i)
    CHECK(std::memcmp(pool.block((*blocks)[i]), pool.block((*again)[i]), pool.block_bytes()) == 0);
}

TEST_CASE("decode batches several sequences", "[sim_engine]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  auto a = prompt_of(5, 300);
  auto b = prompt_of(3, 700);
  std::vector<block_id> ta{0, 1}, tb{2};
  std::vector<decode_seq> batch{{a, ta, {}, {}}, {b, tb, {}, {}}};
  auto out = test::value_or_fail(e.decode(pool, batch));
  REQUIRE(out.size() == 2);
  CHECK(out[0] == e.next_token(a, {}));
  CHECK(out[1] == e.next_token(b, {}));
  CHECK(e.check_kv(pool, a, ta, 4, 5).ok());
  CHECK(e.check_kv(pool, b, tb, 2, 3).ok());
  CHECK_FALSE(e.check_kv(pool, a, ta, 0, 4).ok());  // only n-1 was written
  CHECK(test::value_or_fail(e.decode(pool, std::span<const decode_seq>{})).empty());
}

TEST_CASE("next_token is deterministic and stays in the word range", "[sim_engine]") {
  sim_engine e(fast_config());
  auto ctx = prompt_of(20);
  sampling_params greedy;
  CHECK(e.next_token(ctx, greedy) == e.next_token(ctx, greedy));
  sim_engine e2(fast_config());
  CHECK(e2.next_token(ctx, greedy) == e.next_token(ctx, greedy));

  std::set<token_id> seen;
  std::vector<token_id> c;
  for (int i = 0; i < 500; ++i) {
    auto t = e.next_token(c, greedy);  // includes the empty context
    REQUIRE(t >= sim_engine::first_word_id);
    REQUIRE(t < 1000);
    seen.insert(t);
    c.push_back(t);
  }
  CHECK(seen.size() > 50);  // not stuck on a few ids

  auto cfg = fast_config();
  cfg.vocab_size = static_cast<uint32_t>(sim_engine::first_word_id) + 1;  // one word
  sim_engine tiny(cfg);
  CHECK(tiny.next_token(ctx, greedy) == sim_engine::first_word_id);
}

TEST_CASE("next_token depends on the context", "[sim_engine]") {
  sim_engine e(fast_config());
  auto ctx = prompt_of(20);
  auto t = e.next_token(ctx, {});
  std::set<token_id> outs{t};
  for (size_t i = 12; i < ctx.size(); ++i) {  // the most recent tokens
    auto c = ctx;
    c[i] += 1;
    outs.insert(e.next_token(c, {}));
  }
  CHECK(outs.size() > 4);
  // Length matters too (same tokens, one more).
  std::vector<token_id> a(10, 400), b(11, 400);
  CHECK(e.next_token(a, {}) != e.next_token(b, {}));
  // The engine seed matters.
  auto cfg = fast_config();
  cfg.seed ^= 1;
  sim_engine other(cfg);
  CHECK(other.next_token(ctx, {}) != t);
}

TEST_CASE("sampling seed matters only when temperature > 0", "[sim_engine]") {
  sim_engine e(fast_config());
  auto ctx = prompt_of(16);
  sampling_params g1, g2;
  g1.seed = 1;
  g2.seed = 2;
  CHECK(e.next_token(ctx, g1) == e.next_token(ctx, g2));
  CHECK(e.next_token(ctx, g1) == e.next_token(ctx, {}));

  sampling_params s1 = g1, s2 = g2;
  s1.temperature = 0.8f;
  s2.temperature = 0.8f;
  CHECK(e.next_token(ctx, s1) == e.next_token(ctx, s1));
  // Over a few contexts, different seeds must give different tokens at least once.
  int differs = 0;
  for (int i = 0; i < 8; ++i) {
    auto c = prompt_of(16 + i);
    if (e.next_token(c, s1) != e.next_token(c, s2)) ++differs;
  }
  CHECK(differs >= 6);
  // Temperature itself only switches the seed in, its value does not matter.
  sampling_params s1b = s1;
  s1b.temperature = 1.5f;
  CHECK(e.next_token(ctx, s1b) == e.next_token(ctx, s1));
  // Sampling flows through prefill too.
  block_pool pool(e.info().layout, 8);
  std::vector<block_id> table{0, 1, 2, 3};
  CHECK(prefill_all(e, pool, ctx, table, s1) == e.next_token(ctx, s1));
}

TEST_CASE("sim logits put greedy on next_token and feed logprobs and penalties",
          "[sim_engine][logprobs]") {
  sim_engine e(fast_config());
  const auto ctx = prompt_of(12);
  const auto row = e.logits(ctx);
  REQUIRE(row.size() == 1000);
  const auto best = static_cast<token_id>(std::max_element(row.begin(), row.end()) - row.begin());
  CHECK(best == e.next_token(ctx, {}));
  // Asking for logprobs does not change a greedy token.
  sampling_params s;
  s.top_logprobs = 3;
  token_logprobs lp;
  CHECK(e.sample(ctx, ctx.size(), s, &lp) == best);
  REQUIRE(lp.top.size() == 3);
  CHECK(lp.top[0].token == best);
  CHECK(lp.logprob == lp.top[0].logprob);
  CHECK(lp.logprob < 0);
  CHECK(lp.top[1].logprob <= lp.top[0].logprob);
  // A bias against the favourite makes greedy pick the next best.
  const token_id second = lp.top[1].token;
  s.logit_bias = {{best, -100.0f}};
  CHECK(e.sample(ctx, ctx.size(), s, &lp) == second);
  CHECK(lp.top[0].token == best);  // logprobs stay raw: the bias does not show
  // Without options the sim keeps its plain path.
  CHECK(e.sample(ctx, ctx.size(), {}, nullptr) == e.next_token(ctx, {}));
}

TEST_CASE("sim prefill and decode write each sequence's logprobs", "[sim_engine][logprobs]") {
  sim_engine e(fast_config());
  block_pool pool(e.info().layout, 16);
  const auto prompt = prompt_of(9);
  std::vector<block_id> blocks{0, 1, 2, 3};
  sampling_params s;
  s.top_logprobs = 2;
  token_logprobs first;
  prefill_chunk c;
  c.tokens = prompt;
  c.end = static_cast<uint32_t>(prompt.size());
  c.blocks = blocks;
  c.sampling = s;
  c.logprobs = &first;
  auto out = test::value_or_fail(e.prefill(pool, std::span<const prefill_chunk>(&c, 1)));
  REQUIRE(out.size() == 1);
  CHECK(first.top.size() == 2);
  CHECK(first.top[0].token == out[0]);
  auto ctx = prompt;
  ctx.push_back(out[0]);
  token_logprobs next;
  decode_seq d{ctx, blocks, s, static_cast<uint32_t>(prompt.size()), &next};
  auto dec = test::value_or_fail(e.decode(pool, std::span<const decode_seq>(&d, 1)));
  CHECK(next.top.size() == 2);
  CHECK(next.top[0].token == dec[0]);
}
