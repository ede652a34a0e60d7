// The blending decisions (engine/blend.hpp) as plain functions: segment validation, the
// recompute budget and the choice of positions (first tokens of each reused chunk, then the
// highest K/V deviation, the last position always).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "engine/blend.hpp"
#include "test_result.hpp"

using namespace tokenmill;

namespace {

// sys [0, 4) computed, doc A [4, 10) reused, doc B [10, 16) reused, question [16, 20).
const std::vector<blend_segment> rag = {
    {0, 4, false}, {4, 10, true}, {10, 16, true}, {16, 20, false}};

std::vector<uint32_t> range(uint32_t b, uint32_t e) {
  std::vector<uint32_t> v;
  for (uint32_t i = b; i < e; ++i)
    v.push_back(i);
  return v;
}

}  // namespace

TEST_CASE("blend: check_blend_segments accepts a tiling and names what is wrong", "[blend]") {
  CHECK(check_blend_segments(rag, 20));
  CHECK(check_blend_segments(std::vector<blend_segment>{{0, 1, true}}, 1));
  auto refused = [](const std::vector<blend_segment>& s, uint32_t n, const std::string& what,
                    uint32_t max = max_blend_segments) {
    INFO(what);
    test::check_refused(check_blend_segments(s, n, max), errc::invalid_request, "blend: ", what);
  };
  refused({}, 5, "no segments");
  refused({{0, 3, false}, {3, 3, true}, {3, 5, false}}, 5, "segment 1 [3, 3) is empty");
  refused({{0, 3, false}, {2, 5, true}}, 5, "segment 1 [2, 5) overlaps segment 0 [0, 3)");
  refused({{0, 3, false}, {4, 5, true}}, 5, "segment 1 starts at 4: positions [3, 4)");
  refused({{1, 5, false}}, 5, "segment 0 starts at 1");
  refused({{0, 3, false}, {3, 9, true}}, 5, "segment 1 [3, 9) ends beyond the prompt (5 tokens)");
  refused({{0, 3, false}}, 5, "segments end at 3 but the prompt has 5 tokens");
  refused({{0, 1}, {1, 2}, {2, 3}}, 3, "too many segments: 3 (at most 2)", 2);
  std::vector<blend_segment> many;
  for (uint32_t i = 0; i <= max_blend_segments; ++i)
    many.push_back({i, i + 1, true});
  refused(many, max_blend_segments + 1, "too many segments");
}

TEST_CASE("blend: recompute_ratio must be in [0, 1] and the budget rounds", "[blend]") {
  CHECK(check_recompute_ratio(0));
  CHECK(check_recompute_ratio(1));
  CHECK(check_recompute_ratio(0.15f));
  for (float bad : {-0.01f, 1.01f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    INFO(bad);
    test::check_refused(check_recompute_ratio(bad), errc::invalid_request,
                        "blend: ", "is not in [0, 1]");
  }
  CHECK(recompute_budget(100, 0) == 0);
  CHECK(recompute_budget(100, 1) == 100);
  CHECK(recompute_budget(100, 0.15f) == 15);
  CHECK(recompute_budget(10, 0.26f) == 3);
  CHECK(recompute_budget(10, 0.24f) == 2);
  CHECK(recompute_budget(0, 0.5f) == 0);
}

TEST_CASE("blend: ratio 0 computes only the computed segments, 1 computes all", "[blend]") {
  CHECK_FALSE(selection_needs_deviation(rag, 0, 0));
  CHECK_FALSE(selection_needs_deviation(rag, 0, 1));
  CHECK(selection_needs_deviation(rag, 0, 0.5f));

  auto none = select_recompute(rag, 0, {}, 0, 1);
  std::vector<uint32_t> expect = range(0, 4);
  for (uint32_t p : range(16, 20))
    expect.push_back(p);
  CHECK(none.positions == expect);
  CHECK(none.reused_tokens == 12);
  CHECK(none.recomputed_reused == 0);

  auto all = select_recompute(rag, 0, {}, 1, 1);
  CHECK(all.positions == range(0, 20));
  CHECK(all.recomputed_reused == 12);
}

TEST_CASE("blend: first tokens of each chunk, then the highest deviation", "[blend]") {
  std::vector<float> dev(20, 0.0f);
  dev[7] = 5;    // doc A
  dev[13] = 9;   // doc B
  dev[12] = 5;   // ties with 7: the lower position wins
  dev[4] = 100;  // a first token: taken anyway, not twice
  // 12 reused tokens, ratio 0.5: budget 6 = first tokens 4, 10 + 13, 7, 12 + one of the zero
  // deviations (the lowest position: 5).
  auto s = select_recompute(rag, 0, dev, 0.5f, 1);
  std::vector<uint32_t> expect = {0, 1, 2, 3, 4, 5, 7, 10, 12, 13, 16, 17, 18, 19};
  CHECK(s.positions == expect);
  CHECK(s.recomputed_reused == 6);

  // Two first tokens per chunk, budget 3: the budget runs out inside doc B's first tokens.
  auto f = select_recompute(rag, 0, dev, 0.25f, 2);
  std::vector<uint32_t> expect2 = {0, 1, 2, 3, 4, 5, 10, 16, 17, 18, 19};
  CHECK(f.positions == expect2);
  CHECK(f.recomputed_reused == 3);

  // NaN deviation (a diverging model) ranks first.
  dev[8] = std::numeric_limits<float>::quiet_NaN();
  auto nan = select_recompute(rag, 0, dev, 3.0f / 12.0f, 1);  // budget 3: 4, 10, then 8
  std::vector<uint32_t> expect3 = {0, 1, 2, 3, 4, 8, 10, 16, 17, 18, 19};
  CHECK(nan.positions == expect3);
}

TEST_CASE("blend: the last position is always computed, a cached prefix never", "[blend]") {
  const std::vector<blend_segment> ends_reused = {{0, 3, false}, {3, 8, true}};
  auto s = select_recompute(ends_reused, 0, {}, 0, 1);
  CHECK(s.positions == std::vector<uint32_t>{0, 1, 2, 7});
  CHECK(s.recomputed_reused == 1);

  // Positions [0, 6) are a prefix-cache hit: sys and the first 2 tokens of doc A are
  // neither computed nor counted; doc A's first token is cut off, so its first computed
  // token is not forced.
  auto p = select_recompute(rag, 6, {}, 0, 1);
  CHECK(p.positions == range(16, 20));
  CHECK(p.reused_tokens == 10);
  auto p1 = select_recompute(rag, 6, {}, 1, 1);
  CHECK(p1.positions == range(6, 20));
  std::vector<float> dev(20, 0.0f);
  dev[9] = 1;
  auto ph = select_recompute(rag, 6, dev, 0.2f, 1);  // budget 2: doc B's first token, then 9
  CHECK(ph.positions == std::vector<uint32_t>{9, 10, 16, 17, 18, 19});
}

TEST_CASE("blend: the leading policy shares the budget by chunk length, from each start",
          "[blend]") {
  // Equal chunks: 6 of 12 reused positions, 3 from the start of each.
  auto half = select_leading(rag, 0, 0.5f);
  std::vector<uint32_t> want = {0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 16, 17, 18, 19};
  CHECK(half.positions == want);
  CHECK(half.reused_tokens == 12);
  CHECK(half.recomputed_reused == 6);
  CHECK(select_leading(rag, 0, 0.0f).positions ==
        std::vector<uint32_t>{0, 1, 2, 3, 16, 17, 18, 19});
  CHECK(select_leading(rag, 0, 1.0f).positions == range(0, 20));

  // Chunks of 10 and 5: budget 3 splits 2 + 1; budget 5 is 3.33 + 1.67, whose floors 3 + 1
  // leave one position, to the larger remainder (the second chunk).
  const std::vector<blend_segment> uneven = {
      {0, 2, false}, {2, 12, true}, {12, 17, true}, {17, 18, false}};
  CHECK(select_leading(uneven, 0, 0.2f).positions == std::vector<uint32_t>{0, 1, 2, 3, 12, 17});
  auto five = select_leading(uneven, 0, 0.3f);
  CHECK(five.positions == std::vector<uint32_t>{0, 1, 2, 3, 4, 12, 13, 17});
  CHECK(five.recomputed_reused == 5);

  // A cached prefix cutting chunk A: its rest [6, 10) is 4 of 10 reused positions, and its
  // share starts where the prefix ends.
  auto cut = select_leading(rag, 6, 0.5f);
  CHECK(cut.reused_tokens == 10);
  CHECK(cut.positions == std::vector<uint32_t>{6, 7, 10, 11, 12, 16, 17, 18, 19});

  // A reused last segment: its last position is computed beyond the budget and counted.
  const std::vector<blend_segment> tail = {{0, 3, false}, {3, 10, true}};
  auto none = select_leading(tail, 0, 0.0f);
  CHECK(none.positions == std::vector<uint32_t>{0, 1, 2, 9});
  CHECK(none.recomputed_reused == 1);
}

TEST_CASE("blend: policies by name", "[blend]") {
  for (auto p : {blend_policy::deviation, blend_policy::leading})
    CHECK(test::value_or_fail(parse_blend_policy(blend_policy_name(p))) == p);
  auto bad = parse_blend_policy("sparse");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == errc::invalid_request);
  CHECK_THAT(bad.error().message, Catch::Contains("'sparse'"));
}
