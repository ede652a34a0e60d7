// Position-independent chunk reuse on the cpu engine (issue 17): re-rotated chunk KV equals
// the chunk computed at its new position, a blended prefill at ratio 1 is a full prefill bit
// for bit, at ratio 0 it touches no reused KV, and bad input is refused with nothing
// written.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/cpu/kernels.hpp"
#include "engine/cpu_engine.hpp"
#include "random_model.hpp"
#include "test_result.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

void require_ok(const result<void>& r) {
  if (!r) FAIL(r.error().message);
}

/// The head_dim floats of (layer, K|V, head) at position `pos` of a sequence.
std::vector<float> kv_vec(const block_pool& p, std::span<const block_id> blocks, uint32_t pos,
                          uint32_t layer, uint32_t kv, uint32_t head) {
  const kv_layout& l = p.layout();
  const std::byte* src =
      p.block(blocks[pos / l.block_tokens]) + l.offset(layer, kv, head, pos % l.block_tokens);
  std::vector<float> out(l.head_dim);
  if (l.dtype_bytes == 2)
    cpu::f16_to_f32_row(reinterpret_cast<const uint16_t*>(src), out.data(), l.head_dim);
  else
    std::memcpy(out.data(), src, l.head_dim * 4);
  return out;
}

std::vector<std::byte> snapshot(const block_pool& p) {
  auto m = p.memory();
  return {m.begin(), m.end()};
}

std::vector<block_id> ids(block_id first, uint32_t n) {
  std::vector<block_id> v(n);
  for (uint32_t i = 0; i < n; ++i)
    v[i] = first + i;
  return v;
}

/// A RAG-shaped prompt: system [0, 10), doc A [10, 30), doc B [30, 47), question [47, 55).
struct rag_prompt {
  std::vector<token_id> sys = random_tokens(10, 11), doc_a = random_tokens(20, 12),
                        doc_b = random_tokens(17, 13), question = random_tokens(8, 14);
  std::vector<token_id> tokens;
  std::vector<blend_segment> segments;
  rag_prompt() {
    for (const auto* part : {&sys, &doc_a, &doc_b, &question})
      tokens.insert(tokens.end(), part->begin(), part->end());
    segments = {{0, 10, false}, {10, 30, true}, {30, 47, true}, {47, 55, false}};
  }
  uint32_t size() const { return static_cast<uint32_t>(tokens.size()); }
};

/// Blocks 0-3 hold the prompt's sequence; doc A's chunk cache entry is in blocks 10-11, doc
/// B's in 12-13 (each computed alone at base position 0).
struct rag_pool {
  block_pool pool;
  std::vector<block_id> seq = ids(0, 4), a = ids(10, 2), b = ids(12, 2);
  rag_pool(cpu_engine& e, const rag_prompt& r) : pool(e.info().layout, 16) {
    value_or_fail(e.prefill_at(pool, {r.doc_a, 0, 20, a, {}, {}}, 0));
    value_or_fail(e.prefill_at(pool, {r.doc_b, 0, 17, b, {}, {}}, 0));
  }
  void place(cpu_engine& e) {
    require_ok(e.move_chunk_kv(pool, {a, 0, 20, seq, 10}));
    require_ok(e.move_chunk_kv(pool, {b, 0, 17, seq, 30}));
  }
};

}  // namespace

TEST_CASE("rope: rotating at p then by q - p equals rotating at q", "[cpu][blend]") {
  const rope_scaling l3{rope_scaling::kind::llama3, 8, 1, 4, 64};
  for (const auto* scaling : {&l3, static_cast<const rope_scaling*>(nullptr)}) {
    auto inv = cpu::rope_inv_freqs(64, 500000, scaling ? *scaling : rope_scaling{}, nullptr);
    for (rope_style style : {rope_style::adjacent, rope_style::halves}) {
      for (auto [p, q] : {std::pair{0u, 1000u}, {1500u, 7u}, {33u, 33u}}) {
        INFO("p=" << p << " q=" << q << " halves=" << (style == rope_style::halves));
        std::vector<float> v(64), direct(64), cs(64);
        for (size_t i = 0; i < 64; ++i)
          v[i] = std::sin(0.37f * i + 0.1f);
        direct = v;
        cpu::rope_angles(p, inv.data(), 32, cs.data(), cs.data() + 32);
        cpu::rope_apply(v.data(), 64, cs.data(), cs.data() + 32, style);
        const auto at_p = v;
        cpu::rope_angles_delta(int64_t{q} - p, inv.data(), 32, cs.data(), cs.data() + 32);
        cpu::rope_apply(v.data(), 64, cs.data(), cs.data() + 32, style);
        cpu::rope_angles(q, inv.data(), 32, cs.data(), cs.data() + 32);
        cpu::rope_apply(direct.data(), 64, cs.data(), cs.data() + 32, style);
        CHECK(max_abs_diff(v, direct) < 2e-6f);
        if (p != q) CHECK(max_abs_diff(at_p, direct) > 1e-2f);  // the move did something
      }
    }
  }
}

TEST_CASE("cpu engine: a chunk computed alone at p and moved to q equals it computed at q",
          "[cpu][blend]") {
  struct variant {
    const char* name;
    model_options opt;
  };
  const variant variants[] = {
      {"adjacent", {dtype::f32, rope_style::adjacent, false, {}, 4}},
      {"halves qkv-bias", {dtype::f32, rope_style::halves, true, {}, 4}},
      {"llama3",
       {dtype::f16, rope_style::adjacent, false, {rope_scaling::kind::llama3, 8, 1, 4, 16}, 4}},
      {"halves llama3",
       {dtype::f32, rope_style::halves, false, {rope_scaling::kind::llama3, 4, 1, 4, 32}, 4}},
  };
  for (const auto& v : variants) {
    auto model = make_random_model(v.opt);
    cpu_engine e32(model, {.threads = 2, .kv_dtype_bytes = 4, .block_tokens = 16});
    for (uint32_t kv_bytes : {4u, 2u}) {
      cpu_engine e(model, {.threads = 2, .kv_dtype_bytes = kv_bytes, .block_tokens = 16});
      const uint32_t n = 21;
      auto chunk = random_tokens(n, 21);
      for (auto [p, q] : {std::pair{0u, 37u}, {50u, 3u}}) {
        INFO(v.name << " kv_bytes=" << kv_bytes << " p=" << p << " q=" << q);
        block_pool pool(e.info().layout, 16);
        const auto at_p = ids(0, 2), at_q = ids(2, 2), moved = ids(4, 4);
        value_or_fail(e.prefill_at(pool, {chunk, 0, n, at_p, {}, {}}, p));
        value_or_fail(e.prefill_at(pool, {chunk, 0, n, at_q, {}, {}}, q));
        // The f32 computation at q: what an f16 cache approximates.
        block_pool truth(e32.info().layout, 2);
        value_or_fail(e32.prefill_at(truth, {chunk, 0, n, ids(0, 2), {}, {}}, q));
        const auto src_before = snapshot(pool);
        require_ok(e.move_chunk_kv(pool, {at_p, p, n, moved, q}));
        // The source is only read.
        for (block_id b : at_p)
          CHECK(std::memcmp(pool.block(b), src_before.data() + b * pool.block_bytes(),
                            pool.block_bytes()) == 0);
        const auto& lay = e.info().layout;
        for (uint32_t l = 0; l < lay.layers; ++l) {
          float err = 0, scale = 0, unmoved = 0, f16_noise = 0;
          for (uint32_t kv = 0; kv < 2; ++kv)
            for (uint32_t h = 0; h < lay.kv_heads; ++h)
              for (uint32_t i = 0; i < n; ++i) {
                auto want = kv_vec(pool, at_q, i, l, kv, h);
                auto got = kv_vec(pool, moved, q + i, l, kv, h);
                auto exact = kv_vec(truth, ids(0, 2), i, l, kv, h);
                err = std::max(err, max_abs_diff(got, want));
                f16_noise = std::max(f16_noise, max_abs_diff(want, exact));
                if (kv == 0)
                  unmoved = std::max(unmoved, max_abs_diff(kv_vec(pool, at_p, i, l, kv, h), want));
                for (float x : want)
                  scale = std::max(scale, std::fabs(x));
              }
          INFO("layer " << l << " max |K|,|V| " << scale << " error " << err
                        << " f16 cache error at q " << f16_noise);
          if (kv_bytes == 4) {
            // f32: only the rounding of the two rotation paths, carried through the layers.
            CHECK(err <= scale * 2e-5f);
          } else if (l == 0) {
            // f16, layer 0 (K/V from the token alone): one or two half ulps (5e-4 relative).
            CHECK(err <= scale * 2e-3f);
          } else {
            // f16, deeper layers: the chunk computed at p and at q already differ by the f16
            // cache's own rounding carried through attention; the move adds no more than it.
            CHECK(err <= 2 * f16_noise + scale * 2e-3f);
          }
          CHECK(unmoved > scale * 1e-2f);  // without the rotation the keys would be wrong
        }
      }
    }
  }
}

TEST_CASE("cpu engine: blended prefill at ratio 1 is a full prefill bit for bit", "[cpu][blend]") {
  for (uint32_t kv_bytes : {4u, 2u}) {
    INFO("kv_bytes=" << kv_bytes);
    cpu_engine e(make_random_model({dtype::f16, rope_style::halves, true, {}, 4}),
                 {.threads = 2, .kv_dtype_bytes = kv_bytes, .block_tokens = 16});
    rag_prompt r;
    const uint32_t n = r.size();

    block_pool full(e.info().layout, 16);
    const auto seq = ids(0, 4);
    auto want = value_or_fail(e.prefill_last_logits(full, {r.tokens, 0, n, seq, {}, {}}));

    rag_pool rp(e, r);
    rp.place(e);
    auto got =
        value_or_fail(e.prefill_blend(rp.pool, {r.tokens, r.segments, rp.seq, 0, 1.0f, 1, 1}));
    REQUIRE(got.logits.size() == want.size());
    CHECK(std::memcmp(got.logits.data(), want.data(), want.size() * 4) == 0);
    CHECK(got.reused_tokens == 37);
    CHECK(got.recomputed_reused == 37);
    CHECK(got.computed_tokens == n);
    for (block_id b : seq)
      CHECK(std::memcmp(rp.pool.block(b), full.block(b), full.block_bytes()) == 0);

    // With the system prompt from a prefix cache: equal to prefix + one chunk of the rest.
    block_pool two(e.info().layout, 16);
    value_or_fail(e.prefill(two, std::vector<prefill_chunk>{{r.tokens, 0, 10, seq, {}, {}}}));
    auto want2 = value_or_fail(e.prefill_last_logits(two, {r.tokens, 10, n, seq, {}, {}}));
    rag_pool rp2(e, r);
    value_or_fail(e.prefill(rp2.pool, std::vector<prefill_chunk>{{r.tokens, 0, 10, seq, {}, {}}}));
    rp2.place(e);
    auto got2 =
        value_or_fail(e.prefill_blend(rp2.pool, {r.tokens, r.segments, rp2.seq, 10, 1.0f, 1, 1}));
    CHECK(std::memcmp(got2.logits.data(), want2.data(), want2.size() * 4) == 0);
    CHECK(got2.computed_tokens == n - 10);
  }
}

TEST_CASE("cpu engine: blended prefill at ratio 0 uses only the reused KV", "[cpu][blend]") {
  cpu_engine e(make_random_model({dtype::f32, rope_style::adjacent, false, {}, 4}),
               {.threads = 2, .kv_dtype_bytes = 2, .block_tokens = 16});
  rag_prompt r;
  const uint32_t n = r.size();
  rag_pool rp(e, r);
  value_or_fail(e.prefill(rp.pool, std::vector<prefill_chunk>{{r.tokens, 0, 10, rp.seq, {}, {}}}));
  rp.place(e);
  // The same pool contents, then an ordinary prefill of the question over them.
  rag_pool ref(e, r);
  value_or_fail(
      e.prefill(ref.pool, std::vector<prefill_chunk>{{r.tokens, 0, 10, ref.seq, {}, {}}}));
  ref.place(e);
  REQUIRE(snapshot(ref.pool) == snapshot(rp.pool));
  auto want = value_or_fail(e.prefill_last_logits(ref.pool, {r.tokens, 47, n, ref.seq, {}, {}}));

  const auto before = snapshot(rp.pool);
  auto got =
      value_or_fail(e.prefill_blend(rp.pool, {r.tokens, r.segments, rp.seq, 10, 0.0f, 1, 1}));
  CHECK(std::memcmp(got.logits.data(), want.data(), want.size() * 4) == 0);
  CHECK(got.recomputed_reused == 0);
  CHECK(got.computed_tokens == 8);
  CHECK(got.selected_deviation_share == 0);
  CHECK(got.select_layer_tokens == 8);
  // Every reused position keeps its bytes in every layer.
  const auto& lay = e.info().layout;
  block_pool prior(lay, 16);
  std::memcpy(prior.memory().data(), before.data(), before.size());
  for (uint32_t pos = 10; pos < 47; ++pos)
    for (uint32_t l = 0; l < lay.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv)
        for (uint32_t h = 0; h < lay.kv_heads; ++h)
          REQUIRE(kv_vec(rp.pool, rp.seq, pos, l, kv, h) == kv_vec(prior, rp.seq, pos, l, kv, h));
}

TEST_CASE("cpu engine: a partial ratio recomputes the selected tokens only", "[cpu][blend]") {
  cpu_engine e(make_random_model({dtype::f32, rope_style::halves, false, {}, 4}),
               {.threads = 2, .kv_dtype_bytes = 4, .block_tokens = 16});
  rag_prompt r;
  const uint32_t n = r.size();
  block_pool full(e.info().layout, 16);
  auto want = value_or_fail(e.prefill_last_logits(full, {r.tokens, 0, n, ids(0, 4), {}, {}}));

  float err_at[3] = {};
  const float ratios[3] = {0.0f, 0.3f, 0.7f};
  for (int i = 0; i < 3; ++i) {
    rag_pool rp(e, r);
    rp.place(e);
    const auto before = snapshot(rp.pool);
    auto got =
        value_or_fail(e.prefill_blend(rp.pool, {r.tokens, r.segments, rp.seq, 0, ratios[i], 1, 1}));
    err_at[i] = max_abs_diff(got.logits, want);
    INFO("ratio " << ratios[i] << " max logit error " << err_at[i]);
    CHECK(got.recomputed_reused == recompute_budget(37, ratios[i]));
    CHECK(got.computed_tokens == 18 + got.recomputed_reused);
    if (ratios[i] == 0) continue;
    CHECK(got.select_layer_tokens == n);
    // The recomputed tokens carry at least their share of the deviation (the highest ones).
    CHECK(got.selected_deviation_share <= 1.0);
    CHECK(got.selected_deviation_share >= (got.recomputed_reused - 2) / 37.0);
    // On layers past the selection layer, exactly recomputed_reused reused positions
    // changed, among them the first token of each chunk.
    block_pool prior(e.info().layout, 16);
    std::memcpy(prior.memory().data(), before.data(), before.size());
    for (uint32_t l = 2; l < 4; ++l) {
      uint32_t changed = 0;
      for (uint32_t pos = 10; pos < 47; ++pos)
        if (kv_vec(rp.pool, rp.seq, pos, l, 0, 0) != kv_vec(prior, rp.seq, pos, l, 0, 0)) ++changed;
      CHECK(changed == got.recomputed_reused);
      CHECK(kv_vec(rp.pool, rp.seq, 10, l, 0, 0) != kv_vec(prior, rp.seq, 10, l, 0, 0));
      CHECK(kv_vec(rp.pool, rp.seq, 30, l, 0, 0) != kv_vec(prior, rp.seq, 30, l, 0, 0));
    }
  }
  // More recomputation, closer to the full prefill (this model, these seeds).
  CHECK(err_at[2] < err_at[0]);
}

TEST_CASE("cpu engine: bad blend input is refused and writes nothing", "[cpu][blend]") {
  cpu_engine e(make_random_model({dtype::f32, rope_style::adjacent, false, {}, 4}),
               {.threads = 2, .kv_dtype_bytes = 4, .block_tokens = 16});
  rag_prompt r;
  rag_pool rp(e, r);
  rp.place(e);
  const auto before = snapshot(rp.pool);
  auto refused = [&](const blend_prefill& q, const std::string& what) {
    INFO(what);
    check_refused(e.prefill_blend(rp.pool, q), errc::invalid_request,
                  "cpu engine: prefill_blend: ", what);
    CHECK(snapshot(rp.pool) == before);
  };
  const std::vector<blend_segment> empty_seg = {{0, 10, false}, {10, 10, true}, {10, 55, false}};
  const std::vector<blend_segment> overlap = {{0, 12, false}, {10, 55, true}};
  std::vector<blend_segment> too_many;
  for (uint32_t i = 0; i < max_blend_segments + 1; ++i)
    too_many.push_back({i, i + 1, true});
  std::vector<token_id> long_prompt(max_blend_segments + 1, 5);
  refused({r.tokens, {}, rp.seq, 0, 0.5f, 1, 1}, "no segments");
  refused({r.tokens, empty_seg, rp.seq, 0, 0.5f, 1, 1}, "segment 1 [10, 10) is empty");
  refused({r.tokens, overlap, rp.seq, 0, 0.5f, 1, 1}, "overlaps segment 0");
  refused({long_prompt, too_many, ids(0, 16), 0, 0.5f, 1, 1}, "too many segments");
  refused({r.tokens, r.segments, rp.seq, 0, 1.5f, 1, 1}, "recompute_ratio 1.5 is not in [0, 1]");
  refused({r.tokens, r.segments, rp.seq, 0, std::numeric_limits<float>::quiet_NaN(), 1, 1},
          "is not in [0, 1]");
  refused({r.tokens, r.segments, rp.seq, 55, 0.5f, 1, 1}, "cached prefix of 55 tokens");
  refused({r.tokens, r.segments, ids(0, 3), 0, 0.5f, 1, 1}, "block");
  refused({{}, r.segments, rp.seq, 0, 0.5f, 1, 1}, "empty prompt");
  std::vector<token_id> bad_tok = r.tokens;
  bad_tok[20] = 100000;
  refused({bad_tok, r.segments, rp.seq, 0, 0.5f, 1, 1}, "outside the vocabulary");

  auto moved = [&](const chunk_move& m, const std::string& what) {
    INFO(what);
    check_refused(e.move_chunk_kv(rp.pool, m), errc::invalid_request,
                  "cpu engine: move_chunk_kv: ", what);
    CHECK(snapshot(rp.pool) == before);
  };
  moved({rp.a, 0, 0, rp.seq, 10}, "no tokens");
  moved({rp.a, 0, 40, rp.seq, 10}, "the source block table has 2 blocks, 3 needed");
  moved({rp.a, 0, 20, ids(0, 2), 30}, "the destination block table has 2 blocks, 4 needed");
  const std::vector<block_id> outside = {10, 99};
  moved({outside, 0, 20, rp.seq, 10}, "source block 99 (entry 1) is outside the pool");
  moved({rp.a, 0, 20, rp.seq, 1u << 30}, "exceed the context");
}

TEST_CASE("cpu engine: a prompt whose chunks are partly cached", "[cpu][blend]") {
  // Doc A comes from the chunk cache, doc B is not cached and is computed like the system
  // prompt and the question: at ratio 1 still a full prefill bit for bit, and at ratio 0
  // doc B's KV is a full prefill's on every layer while doc A's stays as moved.
  cpu_engine e(make_random_model({dtype::f32, rope_style::adjacent, true, {}, 4}),
               {.threads = 2, .kv_dtype_bytes = 4, .block_tokens = 16});
  rag_prompt r;
  const uint32_t n = r.size();
  const std::vector<blend_segment> segs = {
      {0, 10, false}, {10, 30, true}, {30, 47, false}, {47, 55, false}};
  block_pool full(e.info().layout, 16);
  auto want = value_or_fail(e.prefill_last_logits(full, {r.tokens, 0, n, ids(0, 4), {}, {}}));
  for (float ratio : {1.0f, 0.0f, 0.4f}) {
    INFO("ratio " << ratio);
    rag_pool rp(e, r);
    require_ok(e.move_chunk_kv(rp.pool, {rp.a, 0, 20, rp.seq, 10}));
    auto got = value_or_fail(e.prefill_blend(rp.pool, {r.tokens, segs, rp.seq, 0, ratio, 1, 1}));
    CHECK(got.reused_tokens == 20);
    CHECK(got.recomputed_reused == recompute_budget(20, ratio));
    CHECK(got.computed_tokens == 35 + got.recomputed_reused);
    if (ratio == 1.0f) CHECK(std::memcmp(got.logits.data(), want.data(), want.size() * 4) == 0);
    if (ratio == 0.0f) {
      // Doc B's rows attend to doc A's moved KV, so only layer 0 (token and position
      // alone) equals the full prefill there; it must have been written at all.
      for (uint32_t pos = 30; pos < 47; ++pos)
        CHECK(max_abs_diff(kv_vec(rp.pool, rp.seq, pos, 0, 0, 0),
                           kv_vec(full, ids(0, 4), pos, 0, 0, 0)) < 1e-5f);
    }
  }
}

TEST_CASE(
    "cpu engine: the leading policy is a full prefill at ratio 1, and below it computes "
    "its positions as decoding them one by one would",
    "[cpu][blend]") {
  cpu_engine e(make_random_model({dtype::f32, rope_style::halves, true, {}, 4}),
               {.threads = 2, .kv_dtype_bytes = 4, .block_tokens = 16});
  rag_prompt r;
  const uint32_t n = r.size();
  auto leading = [&](block_pool& pool, std::span<const block_id> seq, float ratio) {
    return value_or_fail(
        e.prefill_blend(pool, {r.tokens, r.segments, seq, 0, ratio, 1, 1, blend_policy::leading}));
  };

  block_pool full(e.info().layout, 16);
  auto want = value_or_fail(e.prefill_last_logits(full, {r.tokens, 0, n, ids(0, 4), {}, {}}));
  {
    rag_pool rp(e, r);
    rp.place(e);
    auto got = leading(rp.pool, rp.seq, 1.0f);
    CHECK(std::memcmp(got.logits.data(), want.data(), want.size() * 4) == 0);
    CHECK(got.computed_tokens == n);
    for (block_id b : rp.seq)
      CHECK(std::memcmp(rp.pool.block(b), full.block(b), full.block_bytes()) == 0);
  }

  // 11 of 37 reused positions: 6 leading ones of doc A [10, 30), 5 of doc B [30, 47), so
  // the computed rows skip positions (attention tiles with gaps).
  const auto sel = select_leading(r.segments, 0, 0.3f);
  REQUIRE(sel.recomputed_reused == 11);
  rag_pool rp(e, r);
  rp.place(e);
  const auto before = snapshot(rp.pool);
  auto got = leading(rp.pool, rp.seq, 0.3f);
  CHECK(got.computed_tokens == sel.positions.size());
  CHECK(got.select_layer_tokens == sel.positions.size());
  CHECK(got.phases.full_width_ms == 0);
  CHECK(got.phases.selected_ms > 0);

  // The reference: the same positions decoded one at a time over the placed KV, each in
  // every layer over the cache as the earlier ones left it.
  rag_pool ref(e, r);
  ref.place(e);
  std::vector<float> last;
  for (uint32_t p : sel.positions) {
    decode_seq s{std::span<const token_id>(r.tokens).subspan(0, p + 1), ref.seq, {}, p + 1};
    last = value_or_fail(e.decode_logits(ref.pool, {&s, 1}));
  }
  INFO("max logit difference " << max_abs_diff(got.logits, last));
  CHECK(max_abs_diff(got.logits, last) < 1e-3f);
  CHECK(max_abs_diff(got.logits, want) > 1e-3f);  // and it is not the full prefill
  // Positions outside the selection keep their reused KV in every layer.
  block_pool prior(e.info().layout, 16);
  std::memcpy(prior.memory().data(), before.data(), before.size());
  const auto& lay = e.info().layout;
  std::vector<uint8_t> selected(n, 0);
  for (uint32_t p : sel.positions)
    selected[p] = 1;
  for (uint32_t pos = 0; pos < n; ++pos)
    for (uint32_t l = 0; l < lay.layers; ++l) {
      INFO("position " << pos << " layer " << l);
      if (selected[pos])
        CHECK(max_abs_diff(kv_vec(rp.pool, rp.seq, pos, l, 0, 0),
                           kv_vec(ref.pool, ref.seq, pos, l, 0, 0)) < 1e-3f);
      else if (pos >= 10 && pos < 47)
        CHECK(kv_vec(rp.pool, rp.seq, pos, l, 0, 0) == kv_vec(prior, rp.seq, pos, l, 0, 0));
    }
}
