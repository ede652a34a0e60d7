#include <catch2/catch.hpp>

#include <cmath>
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
