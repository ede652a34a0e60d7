// Serving a segmented prompt from a worker's chunk cache (engine/chunk_prefill.hpp, issue
// 17): the segment and ratio rules, and plan -> run -> finish on the cpu engine with a real
// kv_cache: documents computed once are reused in another order, ratio 1 samples what a
// full prefill samples, chunk blocks are cached unpinned afterwards.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "engine/block_hash.hpp"
#include "engine/chunk_prefill.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/kv_cache.hpp"
#include "random_model.hpp"
#include "test_result.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

TEST_CASE("chunk prefill: segments from their ends", "[blend]") {
  const std::vector<uint32_t> ends = {1, 11, 31};
  auto s = value_or_fail(segments_from_ends(ends, 31));
  REQUIRE(s.size() == 3);
  CHECK(s[0].begin == 0);
  CHECK(s[0].end == 1);
  CHECK(s[2].begin == 11);
  CHECK(s[2].end == 31);
  CHECK(check_blend_segments(s, 31));
  // Output a recompute migration appended is one more segment.
  auto t = value_or_fail(segments_from_ends(ends, 40));
  REQUIRE(t.size() == 4);
  CHECK(t[3].begin == 31);
  CHECK(t[3].end == 40);
  CHECK_THAT(error_text(segments_from_ends(std::vector<uint32_t>{5, 5}, 9)),
             Catch::Contains("segment_ends[1] = 5 is not after the previous end (5)"));
  CHECK_THAT(error_text(segments_from_ends(std::vector<uint32_t>{0}, 9)),
             Catch::Contains("segment_ends[0] = 0"));
  CHECK_THAT(error_text(segments_from_ends(std::vector<uint32_t>{4, 12}, 9)),
             Catch::Contains("segment_ends[1] = 12 is past the prompt's 9 tokens"));
  std::vector<uint32_t> many(max_blend_segments + 1);
  for (uint32_t i = 0; i < many.size(); ++i)
    many[i] = i + 1;
  CHECK_THAT(error_text(segments_from_ends(many, static_cast<uint32_t>(many.size()))),
             Catch::Contains("at most 256"));
}

TEST_CASE("chunk prefill: the ratio and the exact prefix", "[blend]") {
  CHECK(resolve_recompute_ratio(-1, 0.15f) == 0.15f);
  CHECK(resolve_recompute_ratio(0, 0.15f) == 0.0f);
  CHECK(resolve_recompute_ratio(1, 0.15f) == 1.0f);
  const std::vector<uint32_t> ends = {20, 40, 50};
  CHECK(exact_prefix_tokens(ends, 50, 0.5f) == 20);
  CHECK(exact_prefix_tokens(ends, 50, 1.0f) == 50);  // blending at 1 is a full prefill
  CHECK(exact_prefix_tokens({}, 50, 0.0f) == 50);    // not segmented
  CHECK(exact_prefix_tokens(std::vector<uint32_t>{50}, 50, 0.0f) == 50);  // one segment
}

namespace {

/// A worker's pool and cache over the cpu engine, with a helper that serves one segmented
/// prompt end to end (plan, run, finish) into fresh sequence blocks and frees them after.
struct worker {
  cpu_engine eng{make_random_model({dtype::f32, rope_style::adjacent, true, {}, 3}),
                 {.threads = 2, .kv_dtype_bytes = 4, .block_tokens = 16}};
  block_pool pool{eng.info().layout, 64};
  kv_cache cache{pool};

  struct served {
    token_id token = 0;
    uint32_t lookup = 0, hit = 0, recomputed = 0, hits = 0;
  };

  served serve(const std::vector<token_id>& prompt, const std::vector<uint32_t>& ends, float ratio,
               blend_policy policy = blend_policy::deviation) {
    const auto n = static_cast<uint32_t>(prompt.size());
    auto seq = cache.allocate(pool.layout().blocks_for(n));
    REQUIRE(seq);
    auto segs = value_or_fail(segments_from_ends(ends, n));
    auto cp = plan_chunk_prefill(cache, prompt, segs, 0, ratio);
    cp->policy = policy;
    prefill_chunk whole{prompt, 0, n, *seq, {}, nullptr, {}};
    served out;
    out.token = value_or_fail(run_chunk_prefill(eng, eng, pool, *cp, whole));
    out.lookup = cp->lookup_tokens;
    out.hit = cp->hit_tokens;
    out.recomputed = cp->recomputed_tokens;
    out.hits = cp->hits();
    finish_chunk_prefill(cache, *cp, true);
    CHECK(cache.release(*seq));
    CHECK(cache.referenced() == 0);  // nothing pinned after the prompt
    return out;
  }

  token_id full_prefill(const std::vector<token_id>& prompt) {
    const auto n = static_cast<uint32_t>(prompt.size());
    block_pool fresh(eng.info().layout, 8);
    const std::vector<block_id> blocks = {0, 1, 2, 3, 4, 5, 6, 7};
    prefill_chunk c{prompt, 0, n, blocks, {}, nullptr, {}};
    return value_or_fail(eng.prefill(fresh, {&c, 1})).at(0);
  }
};

/// sys + the documents in `order` + question, and the segment ends.
struct rag {
  std::vector<std::vector<token_id>> docs = {random_tokens(20, 21), random_tokens(17, 22),
                                             random_tokens(25, 23)};
  std::vector<token_id> sys = random_tokens(6, 24), question = random_tokens(7, 25);
  std::vector<token_id> tokens;
  std::vector<uint32_t> ends;
  explicit rag(std::vector<int> order) {
    auto add = [&](const std::vector<token_id>& part) {
      tokens.insert(tokens.end(), part.begin(), part.end());
      ends.push_back(static_cast<uint32_t>(tokens.size()));
    };
    add(sys);
    for (int d : order)
      add(docs[d]);
    add(question);
  }
};

}  // namespace

TEST_CASE("chunk prefill: documents cached once are reused in another order", "[cpu][blend]") {
  worker w;
  rag first({0, 1, 2});
  // Nothing cached: every segment is a fill, and the prompt is a full prefill.
  auto a = w.serve(first.tokens, first.ends, 0.15f);
  CHECK(a.hits == 0);
  CHECK(a.hit == 0);
  CHECK(a.lookup == first.tokens.size());
  CHECK(a.token == w.full_prefill(first.tokens));
  // Each document is cached under its own chunk hashes now, unpinned.
  for (const auto& d : first.docs)
    CHECK(w.cache.cached_prefix(chunk_block_hashes(d, 16)) ==
          w.pool.layout().blocks_for(static_cast<uint32_t>(d.size())));

  // The same documents in another order: all three (and sys, question) are hits.
  rag second({2, 0, 1});
  SECTION("ratio 1 samples what a full prefill samples") {
    auto b = w.serve(second.tokens, second.ends, 1.0f);
    CHECK(b.hits == 5);
    CHECK(b.hit == second.tokens.size());
    CHECK(b.recomputed == b.hit);
    CHECK(b.token == w.full_prefill(second.tokens));
  }
  SECTION("a low ratio recomputes a share of the reused tokens") {
    auto b = w.serve(second.tokens, second.ends, 0.2f);
    CHECK(b.hits == 5);
    CHECK(b.recomputed > 0);
    CHECK(b.recomputed < b.hit);
  }
  SECTION("the leading policy recomputes what select_leading picks") {
    auto b = w.serve(second.tokens, second.ends, 0.2f, blend_policy::leading);
    CHECK(b.hits == 5);
    auto segs =
        value_or_fail(segments_from_ends(second.ends, static_cast<uint32_t>(second.tokens.size())));
    for (auto& s : segs)
      s.reused = true;
    // 15 of the 75 reused tokens by length, and the question's last one beyond them.
    CHECK(b.recomputed == select_leading(segs, 0, 0.2f).recomputed_reused);
    CHECK(b.recomputed == 16);
  }
  SECTION("a new document is a fill beside the hits") {
    auto fresh = random_tokens(30, 26);
    std::vector<token_id> tokens;
    std::vector<uint32_t> ends;
    for (const auto* part :
         {&second.sys, &second.docs[1], &fresh, &second.docs[0], &second.question}) {
      tokens.insert(tokens.end(), part->begin(), part->end());
      ends.push_back(static_cast<uint32_t>(tokens.size()));
    }
    auto c = w.serve(tokens, ends, 1.0f);
    CHECK(c.hits == 4);
    CHECK(c.hit == tokens.size() - 30);
    CHECK(c.token == w.full_prefill(tokens));
    CHECK(w.cache.cached_prefix(chunk_block_hashes(fresh, 16)) == 2);
  }
}

TEST_CASE("chunk prefill: segments the prefix cache cut are not looked up", "[cpu][blend]") {
  worker w;
  rag r({0, 1});
  // Pretend the first 16 tokens came from the prefix cache: sys [0, 6) and doc 0 [6, 26)
  // start before it and are computed; doc 1 and the question are looked up.
  auto cp = plan_chunk_prefill(
      w.cache, r.tokens,
      value_or_fail(segments_from_ends(r.ends, static_cast<uint32_t>(r.tokens.size()))), 16, 0.5f);
  CHECK(cp->lookup_tokens == 17 + 7);
  REQUIRE(cp->chunks.size() == 2);
  CHECK(cp->chunks[0].segment == 2);
  CHECK(cp->chunks[1].segment == 3);
  finish_chunk_prefill(w.cache, *cp, false);  // not computed: nothing cached, all freed
  CHECK(w.cache.cached() == 0);
  CHECK(w.cache.referenced() == 0);
}
