// The CPU forward pass on small random in-memory models: chunked prefill, token-by-token
// decode and batched decode agree; an f16 KV cache stays close to f32; bad input is an
// errc::invalid_request value.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/block_hash.hpp"
#include "engine/cpu/kernels.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/kv_cache.hpp"
#include "random_model.hpp"
#include "test_result.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

/// Logits of every position of `tokens`, computed by prefill of the first token and then
/// one decode step per token.
std::vector<float> decode_all(cpu_engine& e, block_pool& pool, std::span<const token_id> tokens,
                              std::span<const block_id> blocks) {
  auto out =
      test::value_or_fail(e.prefill_logits(pool, prefill_chunk{tokens, 0, 1, blocks, {}, {}}));
  for (size_t i = 2; i <= tokens.size(); ++i) {
    decode_seq s{tokens.first(i), blocks, {}, {}};
    auto row = test::value_or_fail(e.decode_logits(pool, {&s, 1}));
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

}  // namespace

TEST_CASE("cpu engine: one-chunk prefill == chunked prefill == token-by-token decode", "[cpu]") {
  struct variant {
    const char* name;
    model_options opt;
  };
  const variant variants[] = {
      {"f32", {dtype::f32, rope_style::adjacent, false, {}}},
      {"f16 halves qkv-bias", {dtype::f16, rope_style::halves, true, {}}},
      {"bf16 llama3",
       {dtype::bf16, rope_style::adjacent, false, {rope_scaling::kind::llama3, 8, 1, 4, 16}}},
      {"q8_0 linear",
       {dtype::q8_0, rope_style::halves, false, {rope_scaling::kind::linear, 2, 1, 4, 8192}}},
  };
  // With 2 threads, which split the model's 2 KV heads evenly, batches under 64 rows (all
  // here) fuse each KV head's attention into the Q/K/V job; with 3 the attention is a job of
  // its own. The two give the same bits.
  for (const auto& v : variants) {
    for (uint32_t kv_bytes : {4u, 2u}) {
      std::vector<float> stepped_by[2];
      for (uint32_t threads : {3u, 2u}) {
        INFO(v.name << " kv_bytes=" << kv_bytes << " threads=" << threads);
        cpu_engine e(make_random_model(v.opt),
                     {.threads = threads, .kv_dtype_bytes = kv_bytes, .block_tokens = 16});
        const auto n = 40u;
        auto tokens = random_tokens(n, 5);
        const std::vector<block_id> blocks = {5, 2, 7};  // not in order: exercises the table
        const uint32_t V = e.info().vocab_size;

        block_pool p1(e.info().layout, 8);
        auto whole =
            test::value_or_fail(e.prefill_logits(p1, prefill_chunk{tokens, 0, n, blocks, {}, {}}));
        REQUIRE(whole.size() == size_t{n} * V);

        block_pool p2(e.info().layout, 8);
        std::vector<float> chunked;
        for (auto [b, en] : {std::pair{0u, 13u}, {13u, 29u}, {29u, n}}) {
          auto part = test::value_or_fail(
              e.prefill_logits(p2, prefill_chunk{tokens, b, en, blocks, {}, {}}));
          chunked.insert(chunked.end(), part.begin(), part.end());
        }
        CHECK(max_abs_diff(whole, chunked) < 1e-4f);

        block_pool p3(e.info().layout, 8);
        auto stepped = decode_all(e, p3, tokens, blocks);
        stepped_by[threads - 2] = stepped;
        // With an f16 cache, GEMM (prefill) and GEMV (decode) sum in different orders, and a
        // 1e-7 difference can flip an f16 rounding of K/V (one ulp = 5e-4 relative).
        CHECK(max_abs_diff(whole, stepped) < (kv_bytes == 4 ? 1e-4f : 3e-3f));

        // The cache contents agree too (chunked vs whole prefill).
        for (block_id b : blocks) {
          const float* a = reinterpret_cast<const float*>(p1.block(b));
          const float* c = reinterpret_cast<const float*>(p2.block(b));
          size_t nf = p1.block_bytes() / 4;
          float d = 0;
          for (size_t i = 0; i < nf; ++i)
            d = std::max(d, std::fabs(a[i] - c[i]));
          if (kv_bytes == 4) CHECK(d < 1e-4f);
        }

        // prefill() samples greedily from the last row of each chunk; several chunks of
        // different sequences (and two chunks of one sequence) in one batch.
        block_pool p4(e.info().layout, 16);
        auto t2 = random_tokens(21, 9);
        const std::vector<block_id> b2 = {0, 1}, b3 = {3, 4, 6};
        std::vector<prefill_chunk> batch = {
            {tokens, 0, 20, b3, {}, {}}, {t2, 0, 21, b2, {}, {}}, {tokens, 20, n, b3, {}, {}}};
        auto next = test::value_or_fail(e.prefill(p4, batch));
        REQUIRE(next.size() == 3);
        auto argmax = [&](std::span<const float> row) {
          return token_id(std::max_element(row.begin(), row.end()) - row.begin());
        };
        CHECK(next[0] == argmax(std::span(whole).subspan(19 * V, V)));
        CHECK(next[2] == argmax(std::span(whole).subspan((n - 1) * V, V)));
        block_pool p5(e.info().layout, 4);
        auto alone =
            test::value_or_fail(e.prefill_logits(p5, prefill_chunk{t2, 0, 21, b2, {}, {}}));
        CHECK(next[1] == argmax(std::span(alone).subspan(20 * V, V)));
      }
      INFO(v.name << " kv_bytes=" << kv_bytes);
      CHECK(stepped_by[0] == stepped_by[1]);
    }
  }
}

TEST_CASE("cpu engine: batched decode equals each sequence alone", "[cpu]") {
  cpu_engine e(make_random_model({dtype::f16, rope_style::adjacent, true, {}}),
               {.threads = 2, .kv_dtype_bytes = 2, .block_tokens = 8});
  const uint32_t V = e.info().vocab_size;
  block_pool pool(e.info().layout, 64);
  const std::vector<size_t> lengths = {1, 9, 30, 17};
  std::vector<std::vector<token_id>> toks;
  std::vector<std::vector<block_id>> tables;
  for (size_t s = 0; s < lengths.size(); ++s) {
    toks.push_back(random_tokens(lengths[s] + 1, 100 + uint32_t(s)));
    tables.push_back(*pool.allocate(pool.layout().blocks_for(uint32_t(lengths[s] + 1))));
    REQUIRE(e.prefill(
        pool, std::vector<prefill_chunk>{{toks[s], 0, uint32_t(lengths[s]), tables[s], {}, {}}}));
  }
  std::vector<decode_seq> batch;
  for (size_t s = 0; s < lengths.size(); ++s)
    batch.push_back({toks[s], tables[s], {}, {}});
  auto together = test::value_or_fail(e.decode_logits(pool, batch));
  REQUIRE(together.size() == lengths.size() * V);
  auto ids = test::value_or_fail(e.decode(pool, batch));
  for (size_t s = 0; s < lengths.size(); ++s) {
    auto alone = test::value_or_fail(e.decode_logits(pool, {&batch[s], 1}));
    CHECK(max_abs_diff(alone, std::span(together).subspan(s * V, V)) < 1e-5f);
    auto row = std::span(together).subspan(s * V, V);
    CHECK(ids[s] == token_id(std::max_element(row.begin(), row.end()) - row.begin()));
  }
}

TEST_CASE("cpu engine: an f16 KV cache stays close to f32, thread count does not matter", "[cpu]") {
  auto model = make_random_model({dtype::f32, rope_style::halves, false, {}}, 3);
  cpu_engine e32(model, {.threads = 1, .kv_dtype_bytes = 4, .block_tokens = 16});
  cpu_engine e16(model, {.threads = 2, .kv_dtype_bytes = 2, .block_tokens = 16});
  cpu_engine e32t(model, {.threads = 4, .kv_dtype_bytes = 4, .block_tokens = 16});
  auto tokens = random_tokens(50, 8);
  const std::vector<block_id> blocks = {0, 1, 2, 3};
  block_pool p32(e32.info().layout, 4), p16(e16.info().layout, 4), p32t(e32.info().layout, 4);
  auto a = test::value_or_fail(e32.prefill_logits(p32, {tokens, 0, 50, blocks, {}, {}}));
  auto b = test::value_or_fail(e16.prefill_logits(p16, {tokens, 0, 50, blocks, {}, {}}));
  auto c = test::value_or_fail(e32t.prefill_logits(p32t, {tokens, 0, 50, blocks, {}, {}}));
  float d16 = max_abs_diff(a, b);
  float max_logit = 0;
  for (float x : a)
    max_logit = std::max(max_logit, std::fabs(x));
  INFO("f16 vs f32 KV: max abs diff " << d16 << ", max |logit| " << max_logit);
  CHECK(d16 < 5e-3f * std::max(1.0f, max_logit));
  CHECK(d16 > 0.0f);  // the f16 path really ran
  CHECK(max_abs_diff(a, c) < 1e-5f);
}

TEST_CASE("cpu engine: bad input is refused as a value and writes nothing", "[cpu]") {
  cpu_engine e(make_random_model({}), {.threads = 2, .kv_dtype_bytes = 4, .block_tokens = 16});
  block_pool pool(e.info().layout, 4);
  std::vector<token_id> ok = {1, 2, 3};
  std::vector<token_id> big = {1, 300, 3};
  std::vector<token_id> neg = {1, -1, 3};
  std::vector<block_id> b1 = {0};
  std::vector<block_id> out_of_pool = {4};
  std::vector<block_id> none;
  std::vector<token_id> long_seq(17, 5);
  auto before = std::vector<std::byte>(pool.memory().begin(), pool.memory().end());
  auto pf = [&](std::span<const token_id> t, uint32_t b, uint32_t en,
                std::span<const block_id> bl) {
    std::vector<prefill_chunk> c = {{ok, 0, 3, b1, {}, {}}, {t, b, en, bl, {}, {}}};
    return e.prefill(pool, c);
  };
  // A refused call: errc::invalid_request, its message naming the sequence and the fault.
  auto refused = [](const auto& r, const char* what) {
    test::check_refused(r, errc::invalid_request, "cpu engine: ", what);
  };
  refused(pf(big, 0, 3, b1), "prefill chunk 1: token id 300 at position 1 is outside");
  refused(pf(neg, 0, 3, b1), "token id -1");
  refused(pf(ok, 0, 3, out_of_pool), "block id 4 is outside the pool");
  refused(pf(ok, 0, 3, none), "the block table has 0");
  refused(pf(long_seq, 0, 17, b1), "position 16 needs 2 blocks");
  refused(pf(ok, 2, 2, b1), "range [2, 2) is empty");
  refused(pf(ok, 0, 4, b1), "beyond the prompt");
  std::vector<token_id> empty;
  decode_seq d_empty{empty, b1, {}, {}}, d_long{long_seq, b1, {}, {}}, d_ok{ok, b1, {}, {}};
  refused(e.decode(pool, {&d_empty, 1}), "decode sequence 0 has no tokens");
  refused(e.decode(pool, {&d_long, 1}), "decode sequence 0: position 16");
  std::vector<decode_seq> mixed = {d_ok, d_long};
  refused(e.decode(pool, mixed), "decode sequence 1");
  CHECK(std::memcmp(before.data(), pool.memory().data(), before.size()) == 0);
  // The newest token (the one whose KV gets written) out of range.
  std::vector<token_id> last_big = {1, 2, 300};
  decode_seq d_last{last_big, b1, {}, {}};
  refused(e.decode(pool, {&d_last, 1}), "token id 300 at position 2");

  // A pool built for another layout.
  kv_layout other = e.info().layout;
  other.dtype_bytes = 2;
  block_pool wrong(other, 4);
  refused(e.decode(wrong, {&d_ok, 1}), "block pool layout");
  refused(e.decode_logits(wrong, {&d_ok, 1}), "block pool layout");
  refused(e.prefill_logits(pool, {ok, 0, 3, none, {}, {}}), "the block table has 0");

  // Configurations the engine cannot serve.
  CHECK_THROWS_AS(cpu_engine(make_random_model({}), {.threads = 1, .kv_dtype_bytes = 3}),
                  std::invalid_argument);
  CHECK_THROWS_AS(cpu_engine(nullptr, {}), std::invalid_argument);
  auto broken = std::make_shared<loaded_model>(*make_random_model({}));
  broken->weights.layers[1].wk.rows = 31;
  CHECK_THROWS_AS(cpu_engine(broken, {}), std::invalid_argument);

  // Still works after the errors.
  CHECK(test::value_or_fail(e.decode(pool, {&d_ok, 1})).size() == 1);
}

TEST_CASE("cpu_kv_layout", "[cpu]") {
  llama_config c;
  c.layers = 3;
  c.kv_heads = 2;
  c.head_dim = 64;
  auto l = cpu_kv_layout(c, {.threads = 0, .kv_dtype_bytes = 4, .block_tokens = 32});
  CHECK(l.layers == 3);
  CHECK(l.kv_heads == 2);
  CHECK(l.head_dim == 64);
  CHECK(l.block_tokens == 32);
  CHECK(l.dtype_bytes == 4);
}

namespace {

size_t argmax(std::span<const float> row) {
  return static_cast<size_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

}  // namespace

TEST_CASE("cpu engine: a prefix evicted to the second tier and onboarded gives identical logits",
          "[cpu][kv_tier]") {
  cpu_engine e(make_random_model({}), {.threads = 2, .kv_dtype_bytes = 2, .block_tokens = 16});
  const uint32_t V = e.info().vocab_size;
  const uint32_t n = 70, k = 48;  // 3 full blocks reused, the rest computed
  auto tokens = random_tokens(n, 11);
  const auto chain = block_hashes(tokens, 16);
  REQUIRE(chain.size() == 4);
  const uint32_t steps = 4;

  // Reference: the prefix computed in place, then the rest, then greedy decode steps.
  block_pool ref(e.info().layout, 8);
  const std::vector<block_id> rb{0, 1, 2, 3, 4, 5};
  test::value_or_fail(e.prefill_logits(ref, prefill_chunk{tokens, 0, k, rb, {}, {}}));
  auto ref_rest =
      test::value_or_fail(e.prefill_logits(ref, prefill_chunk{tokens, k, n, rb, {}, {}}));
  std::vector<token_id> ref_seq = tokens;
  std::vector<float> ref_decode;
  for (uint32_t s = 0; s < steps; ++s) {
    auto last = std::span<const float>(s == 0 ? ref_rest : ref_decode).last(V);
    ref_seq.push_back(static_cast<token_id>(argmax(last)));
    decode_seq d{ref_seq, rb, {}, {}};
    auto row = test::value_or_fail(e.decode_logits(ref, {&d, 1}));
    ref_decode.insert(ref_decode.end(), row.begin(), row.end());
  }

  // Tiered: the prefix computed and cached, evicted to the tier (host 2 blocks, disk 4,
  // so one block goes on to disk), the pool overwritten, then onboarded by a prefix hit.
  block_pool pool(e.info().layout, 6);
  kv_cache cache(pool);
  auto tier = kv_tier::make(pool, kv_tier_config{2, 4, ""}, "cpu-test");
  REQUIRE(tier);
  cache.attach_tier(std::move(tier.value()));
  auto first = *cache.allocate(3);
  test::value_or_fail(e.prefill_logits(pool, prefill_chunk{tokens, 0, k, first, {}, {}}));
  for (uint32_t b = 0; b < 3; ++b)
    cache.commit(first[b], chain[b]);
  REQUIRE(cache.release(first));
  auto all = *cache.allocate(6);  // evicts the three cached blocks
  CHECK(cache.cached() == 0);
  CHECK(cache.tier()->where(chain[0]) == kv_tier_level::host);
  CHECK(cache.tier()->where(chain[2]) == kv_tier_level::disk);
  std::memset(pool.memory().data(), 0x5a, pool.memory().size());
  REQUIRE(cache.release(all));

  auto blocks = cache.acquire_prefix(chain, 3);
  REQUIRE(blocks.size() == 3);
  CHECK(cache.onboarded() == 3);
  for (uint32_t b = 0; b < 3; ++b)  // the transport's checksum of every onboarded block
    CHECK(block_checksum(pool, blocks[b]) == block_checksum(ref, rb[b]));
  auto fresh = *cache.allocate(3);
  blocks.insert(blocks.end(), fresh.begin(), fresh.end());
  auto rest =
      test::value_or_fail(e.prefill_logits(pool, prefill_chunk{tokens, k, n, blocks, {}, {}}));
  CHECK(rest == ref_rest);  // bit for bit
  std::vector<token_id> seq = tokens;
  std::vector<float> dec;
  for (uint32_t s = 0; s < steps; ++s) {
    auto last = std::span<const float>(s == 0 ? rest : dec).last(V);
    seq.push_back(static_cast<token_id>(argmax(last)));
    decode_seq d{seq, blocks, {}, {}};
    auto row = test::value_or_fail(e.decode_logits(pool, {&d, 1}));
    dec.insert(dec.end(), row.begin(), row.end());
  }
  CHECK(seq == ref_seq);  // identical tokens
  CHECK(dec == ref_decode);
}
