#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "engine/sampler.hpp"

using namespace tokenmill;

namespace {
sampling_params with_temperature(float t, uint64_t seed = 7) {
  sampling_params p;
  p.temperature = t;
  p.seed = seed;
  return p;
}
}  // namespace

TEST_CASE("greedy picks the highest logit, the lowest id on ties", "[sampler]") {
  std::vector<float> logits{0.5f, 2.0f, -1.0f, 2.0f};
  CHECK(sample_token(logits, {}, 0) == 1);
  logits[3] = 2.5f;
  CHECK(sample_token(logits, {}, 0) == 3);
}

namespace {
/// The one-pass scan greedy_token replaces: the reference it must match id for id.
token_id greedy_scan(const std::vector<float>& x) {
  size_t best = 0;
  for (size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[best] || std::isnan(x[best])) best = i;
  return static_cast<token_id>(best);
}
}  // namespace

TEST_CASE("greedy_token matches the one-pass scan, NaN, infinities and ties included",
          "[sampler]") {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> rows = {
      {1.0f},
      {NAN},
      {NAN, NAN, NAN},
      {NAN, -inf, 3.0f, NAN},
      {-inf, -inf, NAN},
      {NAN, -inf, -inf},
      {-0.0f, 0.0f, -1.0f},
      {0.0f, -0.0f},
      {2.0f, NAN, 2.0f, inf, 1.0f, inf},
  };
  // Rows longer than the lanes, with the maximum at every offset and repeated after it.
  for (size_t n : {15u, 16u, 17u, 33u, 100u, 32000u}) {
    for (size_t at : {size_t{0}, n / 3, n - 1}) {
      std::vector<float> r(n);
      for (size_t i = 0; i < n; ++i)
        r[i] = std::sin(static_cast<float>(i) * 0.37f);
      r[at] = 5.0f;
      if (at + 7 < n) r[at + 7] = 5.0f;  // a tie after the first maximum
      if (n > 2) r[n / 2 == at ? 1 : n / 2] = NAN;
      rows.push_back(r);
    }
  }
  for (const auto& r : rows) {
    CAPTURE(r.size(), r.front());
    CHECK(greedy_token(r) == greedy_scan(r));
    CHECK(sample_token(r, {}, 0) == greedy_scan(r));
  }
  CHECK(greedy_token({}) == 0);
}

TEST_CASE("sampling depends only on seed and position", "[sampler]") {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i)
    logits[i] = std::sin(static_cast<float>(i));
  auto p = with_temperature(1.0f, 42);
  std::vector<token_id> a, b;
  for (uint64_t pos = 0; pos < 64; ++pos)
    a.push_back(sample_token(logits, p, pos));
  for (uint64_t pos = 0; pos < 64; ++pos)
    b.push_back(sample_token(logits, p, pos));
  CHECK(a == b);
  std::set<token_id> distinct(a.begin(), a.end());
  CHECK(distinct.size() > 10);  // it really samples
  p.seed = 43;
  std::vector<token_id> c;
  for (uint64_t pos = 0; pos < 64; ++pos)
    c.push_back(sample_token(logits, p, pos));
  CHECK(c != a);
}

TEST_CASE("sampled frequencies follow the softmax at the temperature", "[sampler]") {
  std::vector<float> logits{0.0f, std::log(2.0f), std::log(4.0f)};  // p = 1/7, 2/7, 4/7
  auto p = with_temperature(1.0f, 1);
  std::map<token_id, int> counts;
  const int n = 20000;
  for (int pos = 0; pos < n; ++pos)
    ++counts[sample_token(logits, p, pos)];
  CHECK(counts[0] / double(n) == Approx(1.0 / 7).margin(0.015));
  CHECK(counts[1] / double(n) == Approx(2.0 / 7).margin(0.015));
  CHECK(counts[2] / double(n) == Approx(4.0 / 7).margin(0.015));
  // Temperature 0.5 squares the ratios: 1, 4, 16 of 21.
  p.temperature = 0.5f;
  counts.clear();
  for (int pos = 0; pos < n; ++pos)
    ++counts[sample_token(logits, p, pos)];
  CHECK(counts[2] / double(n) == Approx(16.0 / 21).margin(0.015));
}

TEST_CASE("top-k, top-p and min-p restrict the candidates", "[sampler]") {
  std::vector<float> logits{1.0f, 3.0f, 2.0f, 2.9f, -5.0f};
  auto p = with_temperature(2.0f);
  SECTION("top_k 1 is greedy") {
    p.top_k = 1;
    for (uint64_t pos = 0; pos < 200; ++pos)
      CHECK(sample_token(logits, p, pos) == 1);
  }
  SECTION("top_k 2 keeps the two best") {
    p.top_k = 2;
    std::set<token_id> seen;
    for (uint64_t pos = 0; pos < 500; ++pos)
      seen.insert(sample_token(logits, p, pos));
    CHECK(seen == std::set<token_id>{1, 3});
  }
  SECTION("a tiny top_p is greedy") {
    p.top_p = 0.01f;
    for (uint64_t pos = 0; pos < 200; ++pos)
      CHECK(sample_token(logits, p, pos) == 1);
  }
  SECTION("top_p keeps the smallest prefix reaching the mass") {
    // At T=2 the probabilities (best first: ids 1, 3, 2, 0, 4) are about 0.33, 0.32, 0.20,
    // 0.12, 0.004: 0.6 needs ids 1 and 3.
    p.top_p = 0.6f;
    std::set<token_id> seen;
    for (uint64_t pos = 0; pos < 500; ++pos)
      seen.insert(sample_token(logits, p, pos));
    CHECK(seen == std::set<token_id>{1, 3});
  }
  SECTION("min_p drops tokens below a fraction of the best") {
    p.min_p = 0.5f;  // keeps p >= 0.5 * p(id 1): ids 1, 3 and 2 (exp(-0.5) = 0.61)
    std::set<token_id> seen;
    for (uint64_t pos = 0; pos < 500; ++pos)
      seen.insert(sample_token(logits, p, pos));
    CHECK(seen == std::set<token_id>{1, 2, 3});
    p.min_p = 1.0f;
    for (uint64_t pos = 0; pos < 100; ++pos)
      CHECK(sample_token(logits, p, pos) == 1);
  }
}

TEST_CASE("NaN logits are never sampled", "[sampler]") {
  std::vector<float> logits{NAN, 1.0f, NAN};
  auto p = with_temperature(1.0f);
  for (uint64_t pos = 0; pos < 50; ++pos)
    CHECK(sample_token(logits, p, pos) == 1);
}

TEST_CASE("logprobs are the log-softmax of the raw row, top N best first", "[sampler][logprobs]") {
  std::vector<float> logits{1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  double z = 0;
  for (float x : logits)
    z += std::exp(static_cast<double>(x));
  auto expect = [&](float x) { return static_cast<float>(x - std::log(z)); };
  token_logprobs lp;
  compute_logprobs(logits, 2, 3, lp);
  CHECK(lp.logprob == Approx(expect(2.0f)).margin(1e-6));
  REQUIRE(lp.top.size() == 3);
  // Ties: the lower id first.
  CHECK(lp.top[0].token == 1);
  CHECK(lp.top[1].token == 3);
  CHECK(lp.top[2].token == 2);
  CHECK(lp.top[0].logprob == Approx(expect(3.0f)).margin(1e-6));
  // The probabilities of a whole row sum to 1.
  compute_logprobs(logits, 0, 5, lp);
  double mass = 0;
  for (const auto& a : lp.top)
    mass += std::exp(static_cast<double>(a.logprob));
  CHECK(mass == Approx(1.0).margin(1e-6));
  // top_n larger than the row: every token; 0: none.
  compute_logprobs(logits, 0, 20, lp);
  CHECK(lp.top.size() == 5);
  compute_logprobs(logits, 0, 0, lp);
  CHECK(lp.top.empty());
}

TEST_CASE("logprobs come from the raw logits, whatever the temperature and penalties",
          "[sampler][logprobs]") {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i)
    logits[i] = std::cos(static_cast<float>(i) * 0.7f) * 3;
  token_logprobs raw;
  compute_logprobs(logits, 0, 4, raw);
  const std::vector<token_id> history{1, 2, 3, 0, 0};
  for (float t : {0.0f, 0.5f, 1.5f}) {
    auto p = with_temperature(t, 3);
    p.top_logprobs = 4;
    p.presence_penalty = 1.5f;
    p.logit_bias = {{7, 2.0f}};
    token_logprobs got;
    const auto tok = sample_token(logits, p, 5, {history, 3}, &got);
    token_logprobs want;
    compute_logprobs(logits, tok, 4, want);
    INFO("temperature " << t);
    CHECK(got.logprob == want.logprob);
    REQUIRE(got.top.size() == 4);
    for (size_t i = 0; i < 4; ++i) {
      CHECK(got.top[i].token == raw.top[i].token);
      CHECK(got.top[i].logprob == raw.top[i].logprob);
    }
  }
  // top_logprobs -1: nothing is written; 0: the chosen token only.
  token_logprobs untouched{1.5f, {{9, 0.0f}}};
  sample_token(logits, {}, 0, {}, &untouched);
  CHECK(untouched.logprob == 1.5f);
  sampling_params zero;
  zero.top_logprobs = 0;
  token_logprobs only;
  auto tok = sample_token(logits, zero, 0, {}, &only);
  CHECK(only.top.empty());
  CHECK(only.logprob == Approx(raw.top[0].logprob));  // greedy picked the best
  CHECK(tok == raw.top[0].token);
}

TEST_CASE("logit_bias moves a token up or bans it", "[sampler][penalties]") {
  std::vector<float> logits{0.0f, 1.0f, 5.0f, 2.0f};
  sampling_params p;
  CHECK(sample_token(logits, p, 0) == 2);
  p.logit_bias = {{2, -100.0f}};
  CHECK(sample_token(logits, p, 0) == 3);
  p.logit_bias = {{0, 10.0f}};
  CHECK(sample_token(logits, p, 0) == 0);
  // Ids outside the row are ignored, not a crash.
  p.logit_bias = {{99, 10.0f}, {-1, 10.0f}};
  CHECK(sample_token(logits, p, 0) == 2);
  // The engine's row is left as it was.
  CHECK(logits == std::vector<float>{0.0f, 1.0f, 5.0f, 2.0f});
}

TEST_CASE("presence and frequency penalties count generated tokens only", "[sampler][penalties]") {
  std::vector<float> logits{0.0f, 3.0f, 2.5f, 0.0f};
  // Context: prompt {1, 1}, output {2, 2, 3}.
  const std::vector<token_id> ctx{1, 1, 2, 2, 3};
  sampling_params p;
  p.presence_penalty = 1.0f;
  std::vector<float> row = logits;
  adjust_logits(row, p, {ctx, 2});
  CHECK(row == std::vector<float>{0.0f, 3.0f, 1.5f, -1.0f});  // token 1 is prompt only
  p = {};
  p.frequency_penalty = 0.5f;
  row = logits;
  adjust_logits(row, p, {ctx, 2});
  CHECK(row == std::vector<float>{0.0f, 3.0f, 1.5f, -0.5f});
  // Negative penalties encourage repetition.
  p.frequency_penalty = -1.0f;
  row = logits;
  adjust_logits(row, p, {ctx, 2});
  CHECK(row[2] == 4.5f);
  // Greedy follows the adjusted row.
  p = {};
  p.presence_penalty = 2.0f;
  const std::vector<token_id> out1{0, 1};  // prompt {0}, output {1}
  CHECK(sample_token(logits, p, 2, {out1, 1}) == 2);
  CHECK(sample_token(logits, p, 2, {out1, 2}) == 1);  // no output yet: no penalty
}

TEST_CASE("the repetition penalty scales prompt and output tokens once each, by sign",
          "[sampler][penalties]") {
  std::vector<float> logits{2.0f, -2.0f, 4.0f, 1.0f};
  const std::vector<token_id> ctx{0, 0, 1, 0};  // 0 three times, 1 once, 2 and 3 never
  sampling_params p;
  p.repetition_penalty = 2.0f;
  auto row = logits;
  adjust_logits(row, p, {ctx, 3});
  CHECK(row == std::vector<float>{1.0f, -4.0f, 4.0f, 1.0f});
  // Below 1 it rewards repetition.
  p.repetition_penalty = 0.5f;
  row = logits;
  adjust_logits(row, p, {ctx, 0});
  CHECK(row == std::vector<float>{4.0f, -1.0f, 4.0f, 1.0f});
  // The bias is added before the penalty (vLLM's order): (2 + 2) / 2 = 2.
  p.repetition_penalty = 2.0f;
  p.logit_bias = {{0, 2.0f}};
  row = logits;
  adjust_logits(row, p, {ctx, 3});
  CHECK(row[0] == 2.0f);
}

TEST_CASE("a resumed request counts its resumed prompt tail as output", "[sampler][penalties]") {
  sampling_params p;
  const std::vector<token_id> ctx{5, 6, 7, 8, 9};
  auto h = make_history(ctx, 5, p);
  CHECK(h.output_begin == 5);
  p.resumed = 2;
  h = make_history(ctx, 5, p);
  CHECK(h.output_begin == 3);
  // Decode: prompt_len is the re-prefilled prompt (original + resumed tokens).
  h = make_history(ctx, 4, p);
  CHECK(h.output_begin == 2);
  p.resumed = 10;  // more than the prompt: everything is output
  CHECK(make_history(ctx, 4, p).output_begin == 0);
  CHECK(make_history(ctx, 99, {}).output_begin == 5);  // clamped to the context
}

TEST_CASE("seeded sampling with penalties is reproducible and follows the adjusted row",
          "[sampler][penalties]") {
  std::vector<float> logits(64, 0.0f);
  logits[10] = 5.0f;
  auto p = with_temperature(1.0f, 11);
  // Without penalties token 10 dominates; a huge negative bias on it removes it entirely.
  p.logit_bias = {{10, -100.0f}};
  for (uint64_t pos = 0; pos < 200; ++pos)
    CHECK(sample_token(logits, p, pos) != 10);
  // The same (seed, position, history) always gives the same token.
  p.logit_bias.clear();
  p.frequency_penalty = 2.0f;
  const std::vector<token_id> ctx{10, 10, 10, 3};
  std::vector<token_id> a, b;
  for (uint64_t pos = 0; pos < 32; ++pos) {
    a.push_back(sample_token(logits, p, pos, {ctx, 1}));
    b.push_back(sample_token(logits, p, pos, {ctx, 1}));
  }
  CHECK(a == b);
}
