// Blending on a model with trained, content-dependent attention (issue 17): rag-tiny trained
// by scripts/train-blend-model.py to answer a question that quotes a document with what
// followed the quote (tests/data/blend). The cpu engine reproduces torch's logits for it,
// and a blended prefill of a quote-question RAG prompt keeps the full prefill's first token.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/blend.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/make_model.hpp"
#include "engine/model.hpp"
#include "test_files.hpp"
#include "test_result.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

const std::filesystem::path data_dir =
    std::filesystem::path(TOKENMILL_SOURCE_DIR) / "tests" / "data" / "blend";

std::shared_ptr<const loaded_model> trained_model() {
  static auto m = [] {
    auto r = load_model((data_dir / "rag-tiny-trained.gguf").string());
    if (!r) FAIL("load_model: " << r.error().message);
    return *r;
  }();
  return m;
}

std::vector<float> base64_floats(const std::string& s) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::vector<uint8_t> bytes;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = value(c);
    if (v < 0) continue;  // padding
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push_back(uint8_t(acc >> bits));
    }
  }
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

token_id argmax(std::span<const float> row) {
  return token_id(std::max_element(row.begin(), row.end()) - row.begin());
}

cpu_engine_config engine_config(uint32_t kv_dtype_bytes) {
  cpu_engine_config c;
  c.threads = 2;
  c.kv_dtype_bytes = kv_dtype_bytes;
  c.block_tokens = 16;
  return c;
}

/// Positions [0, n) of `tokens` into `blocks`, greedy sampling.
prefill_chunk whole(std::span<const token_id> tokens, std::span<const block_id> blocks) {
  prefill_chunk c;
  c.tokens = tokens;
  c.end = static_cast<uint32_t>(tokens.size());
  c.blocks = blocks;
  return c;
}

std::vector<block_id> ids(block_id first, uint32_t n) {
  std::vector<block_id> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

/// bench-blend's default prompt (`--question quote`): BOS + 31 system tokens, 6 of a pool
/// of 10 documents of 96 random tokens in random order, and a 16-token question quoting one
/// of them. Each trial's documents were computed alone at position 0 (the chunk cache) and
/// are moved into place; the prompt is prefilled in full and blended at each ratio.
struct quote_bench {
  static constexpr uint32_t system = 32, docs = 6, pool_docs = 10, doc_tokens = 96, question = 16;
  static constexpr uint32_t n = system + docs * doc_tokens + question;
  static constexpr uint32_t bt = 16, doc_blocks = doc_tokens / bt, seq_blocks = (n + bt) / bt;

  std::shared_ptr<const loaded_model> model;
  cpu_engine eng;
  block_pool pool;
  std::mt19937_64 rng{7};
  std::vector<std::vector<token_id>> pool_text;
  std::vector<token_id> sys;
  std::vector<block_id> full = ids(0, seq_blocks), blend = ids(seq_blocks, seq_blocks);

  explicit quote_bench(std::shared_ptr<const loaded_model> m)
      : model(m),
        eng(m, engine_config(2)),
        pool(eng.info().layout, 2 * seq_blocks + pool_docs * doc_blocks) {
    sys = draw(system);
    sys[0] = model->config.bos;
    for (uint32_t d = 0; d < pool_docs; ++d) {
      pool_text.push_back(draw(doc_tokens));
      value_or_fail(eng.prefill_at(pool, whole(pool_text.back(), doc_kv(d)), 0));
    }
  }
  std::vector<token_id> draw(uint32_t k) {
    std::uniform_int_distribution<uint32_t> d(3, model->config.vocab - 1);
    std::vector<token_id> t(k);
    for (auto& x : t)
      x = static_cast<token_id>(d(rng));
    return t;
  }
  std::vector<block_id> doc_kv(uint32_t d) const {
    return ids(2 * seq_blocks + d * doc_blocks, doc_blocks);
  }

  struct trial {
    std::vector<token_id> prompt;
    std::vector<blend_segment> segments;
    std::vector<uint32_t> order;
    token_id answer = 0;  ///< the document token after the quote
  };
  trial draw_trial() {
    trial t;
    t.order.resize(pool_docs);
    std::iota(t.order.begin(), t.order.end(), 0u);
    std::shuffle(t.order.begin(), t.order.end(), rng);
    t.order.resize(docs);
    t.prompt = sys;
    t.segments = {{0, system, false}};
    for (uint32_t d : t.order) {
      auto b = static_cast<uint32_t>(t.prompt.size());
      t.prompt.insert(t.prompt.end(), pool_text[d].begin(), pool_text[d].end());
      t.segments.push_back({b, b + doc_tokens, true});
    }
    const auto& q = pool_text[t.order[rng() % docs]];
    const size_t at = rng() % (doc_tokens - question);
    t.prompt.insert(t.prompt.end(), q.begin() + at, q.begin() + at + question);
    t.answer = q[at + question];
    t.segments.push_back({n - question, n, false});
    return t;
  }
  std::vector<float> full_logits(const trial& t) {
    return value_or_fail(eng.prefill_last_logits(pool, whole(t.prompt, full)));
  }
  std::vector<float> blend_logits(const trial& t, float ratio, blend_policy policy) {
    for (uint32_t k = 0; k < docs; ++k)
      if (auto r = eng.move_chunk_kv(
              pool, {doc_kv(t.order[k]), 0, doc_tokens, blend, t.segments[k + 1].begin});
          !r)
        FAIL(r.error().message);
    auto got = value_or_fail(
        eng.prefill_blend(pool, {t.prompt, t.segments, blend, 0, ratio, 1, 1, policy}));
    return got.logits;
  }
};

}  // namespace

TEST_CASE("trained blend model: the cpu engine reproduces torch's logits", "[cpu][blend]") {
  std::ifstream f(data_dir / "rag-tiny-trained-torch.json");
  REQUIRE(f.good());
  const auto j = nlohmann::json::parse(f);
  const auto prompt = j["prompt"].get<std::vector<token_id>>();
  const auto want = base64_floats(j["last_logits_b64"].get<std::string>());
  auto model = trained_model();
  REQUIRE(want.size() == model->config.vocab);
  const auto n = static_cast<uint32_t>(prompt.size());
  cpu_engine eng(model, engine_config(4));
  block_pool pool(eng.info().layout, n / 16 + 2);
  const auto blocks = ids(0, n / 16 + 2);
  auto got = value_or_fail(eng.prefill_last_logits(pool, whole(prompt, blocks)));
  float err = 0, scale = 0;
  for (size_t v = 0; v < want.size(); ++v) {
    err = std::max(err, std::fabs(got[v] - want[v]));
    scale = std::max(scale, std::fabs(want[v]));
  }
  INFO("max |logit| " << scale << ", max difference from torch " << err);
  CHECK(err <= 1e-3f * scale);
  CHECK(argmax(got) == argmax(want));
}

TEST_CASE("trained blend model: blending a quote question keeps the first token", "[cpu][blend]") {
  quote_bench b(trained_model());
  constexpr uint32_t trials = 8;
  uint32_t answered = 0, exact = 0, agree = 0, agree_leading = 0;
  for (uint32_t i = 0; i < trials; ++i) {
    auto t = b.draw_trial();
    auto want = b.full_logits(t);
    answered += argmax(want) == t.answer;
    // Ratio 1 recomputes everything: a full prefill bit for bit.
    auto all = b.blend_logits(t, 1.0f, blend_policy::deviation);
    exact += std::memcmp(all.data(), want.data(), want.size() * 4) == 0;
    auto low = b.blend_logits(t, 0.15f, blend_policy::deviation);
    agree += argmax(low) == argmax(want);
    auto leading = b.blend_logits(t, 0.15f, blend_policy::leading);
    agree_leading += argmax(leading) == argmax(want);
  }
  INFO("of " << trials << " trials: full prefill answers " << answered << ", ratio 1 exact "
             << exact << ", ratio 0.15 top-1 agreement " << agree << " (deviation), "
             << agree_leading << " (leading)");
  CHECK(answered == trials);  // trained: the full prefill answers with the document's next token
  CHECK(exact == trials);
  CHECK(agree == trials);
  CHECK(agree_leading == trials);
}
