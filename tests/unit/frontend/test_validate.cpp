#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "engine/tokenizer.hpp"
#include "frontend/validate.hpp"

using namespace tokenmill;

namespace {
model_info small_model() {
  model_info m;
  m.name = "test";
  m.vocab_size = 1000;
  m.max_context = 64;
  return m;
}
generate_params ids(std::vector<int64_t> v, int64_t max_tokens = 4) {
  generate_params p;
  p.has_text = false;
  p.token_ids = std::move(v);
  p.max_tokens = max_tokens;
  return p;
}
bool mentions(const error_info& e, const std::string& what) {
  return e.message.find(what) != std::string::npos;
}
}  // namespace

TEST_CASE("valid requests pass and are converted", "[validate]") {
  byte_word_tokenizer tok(1000);
  auto m = small_model();
  SECTION("text prompt is tokenized with BOS") {
    generate_params p;
    p.text = "hi";
    p.max_tokens = 3;
    auto v = validate(p, tok, m);
    REQUIRE(v.ok());
    CHECK(v->prompt == std::vector<token_id>{1, 'h' + 3, 'i' + 3});
    CHECK(v->options.max_tokens == 3);
  }
  SECTION("text prompt without BOS") {
    generate_params p;
    p.text = "hi";
    p.add_bos = false;
    auto v = validate(p, tok, m);
    REQUIRE(v.ok());
    CHECK(v->prompt.size() == 2);
  }
  SECTION("token ids, stop ids and sampling pass through") {
    auto p = ids({0, 5, 999});
    p.stop_ids = {7, 8};
    p.sampling.temperature = 0.7f;
    p.sampling.top_p = 0.9f;
    p.sampling.seed = 42;
    p.ignore_eos = true;
    auto v = validate(p, tok, m);
    REQUIRE(v.ok());
    CHECK(v->prompt == std::vector<token_id>{0, 5, 999});
    CHECK(v->options.stop_ids == std::vector<token_id>{7, 8});
    CHECK(v->options.sampling.seed == 42);
    CHECK(v->options.ignore_eos);
  }
  SECTION("prompt + max_tokens exactly at the context is allowed") {
    auto v = validate(ids(std::vector<int64_t>(60, 5), 4), tok, m);
    CHECK(v.ok());
  }
}

TEST_CASE("invalid requests are rejected with a message naming the field", "[validate]") {
  byte_word_tokenizer tok(1000);
  auto m = small_model();
  auto reject = [&](const generate_params& p, const std::string& what) {
    auto v = validate(p, tok, m);
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == errc::invalid_request);
    INFO(v.error().message);
    CHECK(mentions(v.error(), what));
  };
  generate_params empty_text;
  empty_text.text = "";
  reject(empty_text, "prompt is empty");
  reject(ids({}), "prompt is empty");
  reject(ids({1, 2}, 0), "max_tokens");
  reject(ids({1, 2}, -5), "max_tokens");
  reject(ids({1, -1}), "position 1");
  reject(ids({1, 1000}), "outside the vocabulary");
  reject(ids(std::vector<int64_t>(64, 5), 1), "context is 64");
  reject(ids(std::vector<int64_t>(61, 5), 4), "exceeds the model's context");
  auto stops = ids({1});
  stops.stop_ids = {3, 5000};
  reject(stops, "stop token id 5000");
  auto temp = ids({1});
  temp.sampling.temperature = -1;
  reject(temp, "temperature");
  temp.sampling.temperature = std::numeric_limits<float>::quiet_NaN();
  reject(temp, "temperature");
  auto top = ids({1});
  top.sampling.top_p = 0;
  reject(top, "top_p");
  top.sampling.top_p = 1.5f;
  reject(top, "top_p");
  auto minp = ids({1});
  minp.sampling.min_p = -0.1f;
  reject(minp, "min_p");
  minp.sampling.min_p = std::numeric_limits<float>::infinity();
  reject(minp, "min_p");
  auto ss = ids({1});
  ss.stop_strings = {"ok", ""};
  reject(ss, "stop string 1 is empty");
  ss.stop_strings = {std::string(max_stop_string_bytes + 1, 'x')};
  reject(ss, "stop string 0 has");
  ss.stop_strings.assign(max_stop_strings + 1, "x");
  reject(ss, "at most 16 stop strings");
  // Penalties, bias and logprobs (RPC clients reach here without the OpenAI parser).
  auto pen = ids({1});
  pen.sampling.presence_penalty = 2.5f;
  reject(pen, "presence_penalty must be in [-2, 2]");
  pen.sampling.presence_penalty = 0;
  pen.sampling.frequency_penalty = -3;
  reject(pen, "frequency_penalty must be in [-2, 2]");
  pen.sampling.frequency_penalty = std::numeric_limits<float>::quiet_NaN();
  reject(pen, "frequency_penalty");
  pen.sampling.frequency_penalty = 0;
  pen.sampling.repetition_penalty = 0;
  reject(pen, "repetition_penalty must be a finite number > 0");
  auto lp = ids({1});
  lp.top_logprobs = 21;
  reject(lp, "top_logprobs must be -1 (none) or in [0, 20], got 21");
  lp.top_logprobs = -2;
  reject(lp, "top_logprobs");
  auto bias = ids({1});
  bias.logit_bias = {{3, 1.0}, {1000, 1.0}};
  reject(bias, "logit_bias token id 1000 is outside the vocabulary [0, 1000)");
  bias.logit_bias = {{-1, 1.0}};
  reject(bias, "logit_bias token id -1");
  bias.logit_bias = {{3, 100.5}};
  reject(bias, "logit_bias for token 3 must be in [-100, 100]");
  bias.logit_bias.assign(max_logit_bias + 1, {3, 1.0});
  reject(bias, "at most 1024 are allowed");
}

TEST_CASE("penalties, bias and logprobs pass through converted", "[validate]") {
  byte_word_tokenizer tok(1000);
  auto m = small_model();
  auto p = ids({1, 2});
  p.sampling.presence_penalty = -2;
  p.sampling.frequency_penalty = 2;
  p.sampling.repetition_penalty = 1.3f;
  p.sampling.resumed = 9;  // never the client's to set
  p.logit_bias = {{5, -100.0}, {999, 100.0}};
  p.top_logprobs = 20;
  auto v = validate(p, tok, m);
  REQUIRE(v.ok());
  const auto& s = v->options.sampling;
  CHECK(s.presence_penalty == -2);
  CHECK(s.frequency_penalty == 2);
  CHECK(s.repetition_penalty == 1.3f);
  CHECK(s.resumed == 0);
  CHECK(s.top_logprobs == 20);
  REQUIRE(s.logit_bias.size() == 2);
  CHECK(s.logit_bias[0].token == 5);
  CHECK(s.logit_bias[0].bias == -100.0f);
  CHECK(s.logit_bias[1].token == 999);
  auto none = validate(ids({1}), tok, m);
  REQUIRE(none.ok());
  CHECK(none->options.sampling.top_logprobs == -1);
}

TEST_CASE("grammars are compiled at validation and refused naming their field", "[validate]") {
  byte_word_tokenizer tok(1000);
  auto m = small_model();
  auto with = [](grammar_kind k, std::string src, std::string field = {}) {
    auto p = ids({1, 2});
    p.sampling.grammar = k;
    p.sampling.grammar_source = std::move(src);
    p.grammar_field = std::move(field);
    return p;
  };
  auto good = validate(with(grammar_kind::json_schema, R"({"type":"integer"})"), tok, m);
  REQUIRE(good.ok());
  CHECK(good->options.sampling.grammar == grammar_kind::json_schema);
  CHECK(validate(with(grammar_kind::json_object, ""), tok, m).ok());
  auto bad_regex = validate(with(grammar_kind::regex, "(ab", "tokenmill.regex"), tok, m);
  REQUIRE_FALSE(bad_regex.ok());
  CHECK(bad_regex.error().message == "tokenmill.regex: regex: unbalanced '(' at offset 3");
  auto bad_schema = validate(with(grammar_kind::json_schema,
                                  R"({"type":"object","properties":{"n":{"type":"number",)"
                                  R"("multipleOf":2}}})",
                                  "response_format.json_schema.schema"),
                             tok, m);
  REQUIRE_FALSE(bad_schema.ok());
  CHECK(bad_schema.error().message ==
        "response_format.json_schema.schema: unsupported keyword 'multipleOf' at /properties/n");
  auto too_big = validate(with(grammar_kind::regex, std::string(100000, 'a')), tok, m);
  REQUIRE_FALSE(too_big.ok());
  CHECK(mentions(too_big.error(), "grammar: grammar of 100000 bytes is above the limit"));
  auto unknown = ids({1});
  unknown.unknown_grammar_kind = "ebnf";
  unknown.grammar_field = "sampling.grammarSource";
  auto u = validate(unknown, tok, m);
  REQUIRE_FALSE(u.ok());
  CHECK(mentions(u.error(), "unknown grammar kind 'ebnf'"));
  auto stray = ids({1});
  stray.sampling.grammar_source = "a+";
  CHECK(mentions(validate(stray, tok, m).error(), "without a grammar kind"));
  auto replayed = with(grammar_kind::regex, "a+");
  replayed.sampling.resumed = 5;  // only the router sets it
  CHECK(validate(replayed, tok, m)->options.sampling.resumed == 0);
}

TEST_CASE("a prompt given as segments", "[validate]") {
  byte_word_tokenizer tok(1000);
  auto m = small_model();
  auto segs = [](std::vector<prompt_segment> v) {
    generate_params p;
    p.segments = std::move(v);
    p.segments_field = "tokenmill.segments";
    p.max_tokens = 2;
    return p;
  };
  auto text = [](std::string t) { return prompt_segment{true, std::move(t), {}}; };
  auto toks = [](std::vector<int64_t> v) { return prompt_segment{false, {}, std::move(v)}; };
  SECTION("text segments: BOS is a segment of its own, each segment tokenized alone") {
    auto v = validate(segs({text("ab"), toks({7, 8, 9}), text("c")}), tok, m);
    REQUIRE(v.ok());
    CHECK(v->prompt == std::vector<token_id>{1, 'a' + 3, 'b' + 3, 7, 8, 9, 'c' + 3});
    CHECK(v->options.segment_ends == std::vector<uint32_t>{1, 3, 6, 7});
    CHECK(v->options.recompute_ratio < 0);  // the worker's default
  }
  SECTION("a tokenizer without BOS: no BOS segment, never an id outside the vocabulary") {
    struct no_bos final : tokenizer {
      byte_word_tokenizer inner{1000};
      std::vector<token_id> encode(std::string_view t, bool) const override {
        return inner.encode(t, false);
      }
      std::string piece(token_id id) const override { return inner.piece(id); }
      uint32_t vocab_size() const override { return 1000; }
    } plain;
    auto qwen_like = m;
    qwen_like.bos = -1;
    auto v = validate(segs({text("ab"), text("c")}), plain, qwen_like);
    REQUIRE(v.ok());
    CHECK(v->prompt == std::vector<token_id>{'a' + 3, 'b' + 3, 'c' + 3});
    CHECK(v->options.segment_ends == std::vector<uint32_t>{2, 3});
  }
  SECTION("token segments only: no BOS, and the ratio is taken") {
    auto p = segs({toks({4, 5}), toks({6})});
    p.recompute_ratio = 0.5;
    auto v = validate(p, tok, m);
    REQUIRE(v.ok());
    CHECK(v->prompt == std::vector<token_id>{4, 5, 6});
    CHECK(v->options.segment_ends == std::vector<uint32_t>{2, 3});
    CHECK(v->options.recompute_ratio == 0.5f);
  }
  SECTION("bad segments are refused naming the field and the entry") {
    auto refused = [&](generate_params p, const std::string& what) {
      auto v = validate(p, tok, m);
      REQUIRE_FALSE(v.ok());
      CHECK(v.error().code == errc::invalid_request);
      INFO(v.error().message);
      CHECK(mentions(v.error(), what));
    };
    refused(segs({text("a"), text("")}), "tokenmill.segments[1] is empty");
    refused(segs({toks({})}), "tokenmill.segments[0] is empty (no token ids)");
    refused(segs({toks({1, 1000})}),
            "tokenmill.segments[0]: token id 1000 at position 1 is outside the vocabulary");
    std::vector<prompt_segment> many(max_request_segments + 1, toks({1}));
    refused(segs(many), "tokenmill.segments lists 129 segments; at most 128 are allowed");
    for (double r : {-0.1, 1.5, std::nan("")}) {
      auto p = segs({toks({1})});
      p.recompute_ratio = r;
      refused(p, "recompute_ratio must be in [0, 1]");
    }
    auto p = ids({1, 2});
    p.recompute_ratio = 0.5;
    refused(p, "recompute_ratio is only allowed with segments");
    // The context still bounds the whole prompt.
    refused(segs({toks(std::vector<int64_t>(40, 3)), toks(std::vector<int64_t>(30, 4))}),
            "prompt has 70 tokens");
  }
}
