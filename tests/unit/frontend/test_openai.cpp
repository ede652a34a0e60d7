#include <catch2/catch.hpp>

#include <algorithm>
#include <limits>

#include <nlohmann/json.hpp>

#include "frontend/openai.hpp"
#include "frontend/validate.hpp"

using namespace tokenmill;
using namespace tokenmill::openai;
using nlohmann::json;

namespace {
request_context ctx(chat_format f = chat_format::chatml) {
  return {"tiny-model", f};
}
parsed_request ok(endpoint kind, const std::string& body, const request_context& c = ctx()) {
  auto r = parse_request(kind, body, c);
  if (auto* e = std::get_if<api_error>(&r)) FAIL("unexpected error: " << e->message);
  return std::get<parsed_request>(r);
}
api_error err(endpoint kind, const std::string& body) {
  auto r = parse_request(kind, body, ctx());
  REQUIRE(std::holds_alternative<api_error>(r));
  return std::get<api_error>(r);
}
bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}
constexpr auto cmpl = endpoint::completions;
constexpr auto chat = endpoint::chat_completions;
}  // namespace

TEST_CASE("completions: every accepted field is mapped", "[openai]") {
  auto r = ok(cmpl, R"({
    "model": "tiny-model", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5,
    "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 1234, "stop": ["\n\n", "END"],
    "stop_token_ids": [2, 3], "ignore_eos": true, "n": 1, "stream": true,
    "stream_options": {"include_usage": true}, "user": "someone", "presence_penalty": 0,
    "frequency_penalty": 0.0, "logprobs": null, "echo": false, "best_of": 1,
    "unknown_field": {"is": "ignored"}
  })");
  CHECK(r.kind == cmpl);
  CHECK(r.model == "tiny-model");
  CHECK(r.stream);
  CHECK(r.include_usage);
  const auto& p = r.params;
  CHECK(p.has_text);
  CHECK(p.text == "Hello");
  CHECK(p.add_bos);
  CHECK(p.max_tokens == 7);
  CHECK_FALSE(p.max_tokens_to_context);
  CHECK(p.sampling.temperature == Approx(0.5));
  CHECK(p.sampling.top_p == Approx(0.9));
  CHECK(p.sampling.top_k == 40);
  CHECK(p.sampling.min_p == Approx(0.05));
  CHECK(p.sampling.seed == 1234);
  CHECK(p.stop_strings == std::vector<std::string>{"\n\n", "END"});
  CHECK(p.stop_ids == std::vector<int64_t>{2, 3});
  CHECK(p.ignore_eos);
}

TEST_CASE("completions: the prompt as segments", "[openai]") {
  auto r =
      ok(cmpl, R"({"tokenmill": {"segments": ["sys", [5, 6, 7], "q"], "recompute_ratio": 0.25}})");
  const auto& p = r.params;
  REQUIRE(p.segments.size() == 3);
  CHECK(p.segments[0].has_text);
  CHECK(p.segments[0].text == "sys");
  CHECK_FALSE(p.segments[1].has_text);
  CHECK(p.segments[1].token_ids == std::vector<int64_t>{5, 6, 7});
  CHECK(p.segments[2].text == "q");
  REQUIRE(p.recompute_ratio);
  CHECK(*p.recompute_ratio == 0.25);
  CHECK(p.segments_field == "tokenmill.segments");
  CHECK(p.add_bos);
  REQUIRE(r.prompts.size() == 1);
  CHECK(r.prompts[0].segments.size() == 3);
  // Without a ratio the server's default applies; a regex still combines.
  auto d = ok(cmpl, R"({"tokenmill": {"segments": ["a"], "regex": "b+"}})");
  CHECK_FALSE(d.params.recompute_ratio);
  CHECK(d.params.sampling.grammar == grammar_kind::regex);
}

TEST_CASE("completions: defaults and prompt forms", "[openai]") {
  SECTION("minimal body") {
    auto r = ok(cmpl, R"({"prompt": "x"})");
    CHECK(r.model.empty());
    CHECK_FALSE(r.stream);
    CHECK_FALSE(r.include_usage);
    CHECK(r.params.max_tokens == 16);
    CHECK_FALSE(r.params.max_tokens_to_context);
    CHECK(r.params.sampling.temperature == 0);
    CHECK(r.params.sampling.top_p == 1);
    CHECK(r.params.stop_strings.empty());
    CHECK_FALSE(r.params.ignore_eos);
  }
  SECTION("nulls mean default") {
    auto r = ok(cmpl, R"({"prompt": "x", "model": null, "max_tokens": null, "stop": null,
                          "temperature": null, "stream": null, "stream_options": null,
                          "n": null, "seed": null})");
    CHECK(r.params.max_tokens == 16);
    CHECK_FALSE(r.stream);
  }
  SECTION("array of one string") {
    auto r = ok(cmpl, R"({"prompt": ["only one"]})");
    CHECK(r.params.has_text);
    CHECK(r.params.text == "only one");
  }
  SECTION("token ids") {
    auto r = ok(cmpl, R"({"prompt": [1, 15, 999]})");
    CHECK_FALSE(r.params.has_text);
    CHECK(r.params.token_ids == std::vector<int64_t>{1, 15, 999});
    CHECK(r.params.add_bos);
  }
  SECTION("negative ids are left to validate(), which names the position") {
    auto r = ok(cmpl, R"({"prompt": [1, -4]})");
    CHECK(r.params.token_ids == std::vector<int64_t>{1, -4});
  }
  SECTION("stop as one string") {
    CHECK(ok(cmpl, R"({"prompt": "x", "stop": "###"})").params.stop_strings ==
          std::vector<std::string>{"###"});
  }
  SECTION("top_k -1 is off") {
    CHECK(ok(cmpl, R"({"prompt": "x", "top_k": -1})").params.sampling.top_k == 0);
  }
  SECTION("negative seeds wrap to uint64") {
    CHECK(ok(cmpl, R"({"prompt": "x", "seed": -1})").params.sampling.seed == UINT64_MAX);
    CHECK(ok(cmpl, R"({"prompt": "x", "seed": 18446744073709551615})").params.sampling.seed ==
          UINT64_MAX);
  }
  SECTION("integral doubles are integers") {
    CHECK(ok(cmpl, R"({"prompt": "x", "max_tokens": 8.0})").params.max_tokens == 8);
  }
  SECTION("temperature above 2 is accepted") {
    CHECK(ok(cmpl, R"({"prompt": "x", "temperature": 3.5})").params.sampling.temperature ==
          Approx(3.5));
  }
  SECTION("logprobs 0 is off") {
    ok(cmpl, R"({"prompt": "x", "logprobs": 0})");
  }
  SECTION("stream_options without include_usage") {
    auto r = ok(cmpl, R"({"prompt": "x", "stream": true, "stream_options": {}})");
    CHECK(r.stream);
    CHECK_FALSE(r.include_usage);
  }
  SECTION("max_completion_tokens is a chat field; completions ignore it") {
    auto r = ok(cmpl, R"({"prompt": "x", "max_completion_tokens": 3})");
    CHECK(r.params.max_tokens == 16);
  }
}

TEST_CASE("chat: messages are rendered and options mapped", "[openai]") {
  SECTION("neutral tool and format options are accepted") {
    auto r = ok(chat, R"({"messages": [{"role": "user", "content": "Hi"}], "tools": [],
                          "tool_choice": "none", "response_format": {"type": "text"}})");
    CHECK(r.params.has_text);
  }
  SECTION("chatml: no BOS, context-filling max_tokens by default") {
    auto r = ok(chat, R"({"model": "tiny-model", "messages": [{"role": "user", "content": "Hi"}],
                          "logprobs": false, "temperature": 0.7})");
    CHECK(r.kind == chat);
    CHECK(r.params.has_text);
    CHECK(r.params.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    CHECK_FALSE(r.params.add_bos);
    CHECK(r.params.max_tokens_to_context);
    CHECK(r.params.sampling.temperature == Approx(0.7));
  }
  SECTION("llama3 and mistral add BOS") {
    const std::string body = R"({"messages": [{"role": "user", "content": "Hi"}]})";
    CHECK(ok(chat, body, ctx(chat_format::llama3)).params.add_bos);
    CHECK(ok(chat, body, ctx(chat_format::mistral)).params.add_bos);
  }
  SECTION("max_tokens") {
    auto r = ok(chat, R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5})");
    CHECK(r.params.max_tokens == 5);
    CHECK_FALSE(r.params.max_tokens_to_context);
  }
  SECTION("max_completion_tokens wins over max_tokens") {
    auto r = ok(chat, R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                          "max_completion_tokens": 9})");
    CHECK(r.params.max_tokens == 9);
    CHECK_FALSE(r.params.max_tokens_to_context);
  }
  SECTION("content parts are joined without a separator") {
    auto r = ok(chat, R"({"messages": [{"role": "user", "content": [
                            {"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]}]})");
    CHECK(r.params.text == "<|im_start|>user\nHello, world<|im_end|>\n<|im_start|>assistant\n");
  }
  SECTION("developer renders as system; tool and null assistant content are accepted") {
    auto r = ok(chat, R"({"messages": [{"role": "developer", "content": "Be brief."},
                                       {"role": "user", "content": "Q"},
                                       {"role": "assistant", "content": null},
                                       {"role": "tool", "tool_call_id": "call_1",
                                        "content": "42"}]})");
    CHECK(r.params.text ==
          "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
          "<|im_start|>assistant\n<|im_end|>\n"
          "<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n"
          "<|im_start|>assistant\n");
  }
  SECTION("tokenmill extensions") {
    auto r = ok(chat, R"({"messages": [{"role": "user", "content": "Hi"}], "top_k": 5,
                          "min_p": 0.1, "ignore_eos": true, "stop_token_ids": [7],
                          "stream": true, "stream_options": {"include_usage": false}})");
    CHECK(r.params.sampling.top_k == 5);
    CHECK(r.params.sampling.min_p == Approx(0.1));
    CHECK(r.params.ignore_eos);
    CHECK(r.params.stop_ids == std::vector<int64_t>{7});
    CHECK(r.stream);
    CHECK_FALSE(r.include_usage);
  }
}

TEST_CASE("bad requests are rejected naming the field", "[openai]") {
  struct bad_case {
    endpoint kind;
    std::string body;
    int status;
    std::string param;
    std::string message;  // a substring of the message
  };
  const std::string msg = R"("messages": [{"role": "user", "content": "Hi"}])";
  const std::vector<bad_case> cases = {
      // the body itself
      {cmpl, "", 400, "", "request body is not valid JSON"},
      {cmpl, "{\"prompt\": ", 400, "", "request body is not valid JSON"},
      {cmpl, "not json", 400, "", "request body is not valid JSON"},
      {cmpl, R"(["prompt"])", 400, "", "must be a JSON object, got array"},
      {chat, "42", 400, "", "must be a JSON object, got number"},
      {cmpl, "null", 400, "", "must be a JSON object"},
      // model
      {cmpl, R"({"prompt": "x", "model": "gpt-4"})", 404, "model",
       "The model 'gpt-4' does not exist; this server serves 'tiny-model'"},
      {chat, "{" + msg + R"(, "model": "other"})", 404, "model", "does not exist"},
      {cmpl, R"({"prompt": "x", "model": 3})", 400, "model",
       "'model' must be a string, got number"},
      // prompt
      {cmpl, R"({})", 400, "prompt", "'prompt' is required"},
      {cmpl, R"({"prompt": ""})", 400, "prompt", "'prompt' is empty"},
      {cmpl, R"({"prompt": []})", 400, "prompt", "'prompt' is empty"},
      {cmpl, R"({"prompt": [""]})", 400, "prompt[0]", "is empty"},
      {cmpl, R"({"prompt": 5})", 400, "prompt", "'prompt' must be a string, an array"},
      {cmpl, R"({"prompt": {"text": "x"}})", 400, "prompt", "got object"},
      {cmpl, R"({"prompt": ["a", ""]})", 400, "prompt[1]", "'prompt[1]' is empty"},
      {cmpl, R"({"prompt": ["a", 3]})", 400, "prompt[1]", "'prompt[1]' must be a string"},
      {cmpl, R"({"prompt": [[1, 2], 3]})", 400, "prompt[1]",
       "'prompt[1]' must be an array of token ids, got number"},
      {cmpl, R"({"prompt": [[1, 2], []]})", 400, "prompt[1]", "'prompt[1]' is empty"},
      {cmpl, R"({"prompt": [[1, "x"]]})", 400, "prompt[0][1]",
       "'prompt[0][1]' must be an integer token id, got string"},
      {cmpl, R"({"prompt": [1, "a"]})", 400, "prompt[1]",
       "'prompt[1]' must be an integer token id, got string"},
      {cmpl,
       R"({"prompt": ["a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a"]})",
       400, "prompt", "lists 33 prompts; at most 32 are allowed"},
      {cmpl, R"({"prompt": ["a","b","c","d","e"], "n": 16})", 400, "prompt",
       "5 prompts x 16 sequences each is more than the 64"},
      {cmpl, R"({"prompt": [1, 2.5]})", 400, "prompt[1]", "'prompt[1]' must be an integer"},
      {cmpl, R"({"prompt": [1, true]})", 400, "prompt[1]", "integer token id, got boolean"},
      // max_tokens
      {cmpl, R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens",
       "'max_tokens' must be at least 1, got 0"},
      {cmpl, R"({"prompt": "x", "max_tokens": -3})", 400, "max_tokens", "got -3"},
      {cmpl, R"({"prompt": "x", "max_tokens": "8"})", 400, "max_tokens",
       "'max_tokens' must be an integer, got string"},
      {cmpl, R"({"prompt": "x", "max_tokens": 1.5})", 400, "max_tokens",
       "must be an integer, got 1.5"},
      {cmpl, R"({"prompt": "x", "max_tokens": 18446744073709551615})", 400, "max_tokens",
       "too large"},
      {chat, "{" + msg + R"(, "max_completion_tokens": 0})", 400, "max_completion_tokens",
       "at least 1"},
      {chat, "{" + msg + R"(, "max_tokens": 0, "max_completion_tokens": 4})", 400, "max_tokens",
       "at least 1"},
      // sampling
      {cmpl, R"({"prompt": "x", "temperature": "hot"})", 400, "temperature",
       "'temperature' must be a number, got string"},
      {cmpl, R"({"prompt": "x", "temperature": -0.1})", 400, "temperature",
       "'temperature' must be >= 0"},
      {cmpl, R"({"prompt": "x", "temperature": 1e300})", 400, "temperature",
       "must be a finite number"},
      {cmpl, R"({"prompt": "x", "top_p": 0})", 400, "top_p", "'top_p' must be in (0, 1]"},
      {cmpl, R"({"prompt": "x", "top_p": 1.01})", 400, "top_p", "'top_p' must be in (0, 1]"},
      {cmpl, R"({"prompt": "x", "top_p": [1]})", 400, "top_p", "must be a number, got array"},
      {cmpl, R"({"prompt": "x", "top_k": -2})", 400, "top_k", "'top_k' must be -1 (off) or >= 0"},
      {cmpl, R"({"prompt": "x", "top_k": 0.5})", 400, "top_k", "must be an integer"},
      {cmpl, R"({"prompt": "x", "min_p": 1.5})", 400, "min_p", "'min_p' must be in [0, 1]"},
      {cmpl, R"({"prompt": "x", "min_p": -0.5})", 400, "min_p", "'min_p' must be in [0, 1]"},
      {cmpl, R"({"prompt": "x", "seed": "42"})", 400, "seed",
       "'seed' must be an integer, got string"},
      {cmpl, R"({"prompt": "x", "seed": 0.5})", 400, "seed", "must be an integer"},
      // stops and extensions
      {cmpl, R"({"prompt": "x", "stop": 5})", 400, "stop",
       "'stop' must be a string or an array of strings"},
      {cmpl, R"({"prompt": "x", "stop": ["a", 1]})", 400, "stop[1]",
       "'stop[1]' must be a string, got number"},
      {cmpl, R"({"prompt": "x", "stop_token_ids": 5})", 400, "stop_token_ids",
       "must be an array of integers"},
      {cmpl, R"({"prompt": "x", "stop_token_ids": [1, "2"]})", 400, "stop_token_ids[1]",
       "'stop_token_ids[1]' must be an integer"},
      {cmpl, R"({"prompt": "x", "ignore_eos": 1})", 400, "ignore_eos",
       "'ignore_eos' must be a boolean, got number"},
      // unsupported options
      {cmpl, R"({"prompt": "x", "n": 0})", 400, "n", "'n' must be in [1, 16], got 0"},
      {cmpl, R"({"prompt": "x", "n": 17})", 400, "n", "'n' must be in [1, 16]"},
      {cmpl, R"({"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]})", 400,
       "tools", "'tools' is only supported on /v1/chat/completions"},
      {chat, "{" + msg + R"(, "tool_choice": "required"})", 400, "tool_choice",
       "'tool_choice' \"required\" needs 'tools'"},
      // structured output
      {chat, "{" + msg + R"(, "response_format": "json"})", 400, "response_format",
       "'response_format' must be an object, got string"},
      {chat, "{" + msg + R"(, "response_format": {}})", 400, "response_format.type",
       "'response_format.type' is required"},
      {chat, "{" + msg + R"(, "response_format": {"type": 1}})", 400, "response_format.type",
       "'response_format.type' must be a string, got number"},
      {cmpl, R"({"prompt": "x", "response_format": {"type": "xml"}})", 400, "response_format.type",
       "must be \"text\", \"json_object\" or \"json_schema\", got \"xml\""},
      {chat, "{" + msg + R"(, "response_format": {"type": "json_schema"}})", 400,
       "response_format.json_schema", "'response_format.json_schema' is required"},
      {chat, "{" + msg + R"(, "response_format": {"type": "json_schema", "json_schema": []}})", 400,
       "response_format.json_schema", "must be an object, got array"},
      {chat,
       "{" + msg + R"(, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})",
       400, "response_format.json_schema.schema",
       "'response_format.json_schema.schema' is required"},
      {chat,
       "{" + msg +
           R"(, "response_format": {"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}})",
       400, "response_format.json_schema.name", "must be a string, got number"},
      {chat,
       "{" + msg +
           R"(, "response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}})",
       400, "response_format.json_schema.strict", "must be a boolean, got string"},
      {chat,
       "{" + msg +
           R"(, "response_format": {"type": "json_schema", "json_schema": {"schema": "obj"}}})",
       400, "response_format.json_schema.schema", "must be an object, got string"},
      {cmpl, R"({"prompt": "x", "tokenmill": "a+"})", 400, "tokenmill",
       "'tokenmill' must be an object, got string"},
      {cmpl, R"({"prompt": "x", "tokenmill": {"regex": 5}})", 400, "tokenmill.regex",
       "'tokenmill.regex' must be a string, got number"},
      {cmpl, R"({"prompt": "x", "tokenmill": {"regex": ""}})", 400, "tokenmill.regex",
       "'tokenmill.regex' is empty"},
      {cmpl, R"({"prompt": "x", "tokenmill": {"grammar": "root ::= x"}})", 400, "tokenmill.grammar",
       "unknown field 'tokenmill.grammar'"},
      {cmpl,
       R"({"prompt": "x", "response_format": {"type": "json_object"}, "tokenmill": {"regex": "a"}})",
       400, "tokenmill.regex", "cannot be combined"},
      {chat, "{" + msg + R"(, "n": -3})", 400, "n", "'n' must be in [1, 16]"},
      {cmpl, R"({"prompt": "x", "n": "1"})", 400, "n", "'n' must be an integer"},
      // the prompt as segments (chunk reuse)
      {cmpl, R"({"tokenmill": {"segments": "ab"}})", 400, "tokenmill.segments",
       "'tokenmill.segments' must be an array of strings or of arrays of token ids, got string"},
      {cmpl, R"({"tokenmill": {"segments": []}})", 400, "tokenmill.segments",
       "'tokenmill.segments' is empty"},
      {cmpl, R"({"tokenmill": {"segments": ["a", 5]}})", 400, "tokenmill.segments[1]",
       "'tokenmill.segments[1]' must be a string or an array of token ids, got number"},
      {cmpl, R"({"tokenmill": {"segments": [[1, "2"]]}})", 400, "tokenmill.segments[0][1]",
       "'tokenmill.segments[0][1]' must be an integer token id, got string"},
      {cmpl, R"({"prompt": "x", "tokenmill": {"segments": ["a"]}})", 400, "tokenmill.segments",
       "replaces 'prompt'"},
      {chat, "{" + msg + R"(, "tokenmill": {"segments": ["a"]}})", 400, "tokenmill.segments",
       "only supported on /v1/completions"},
      {cmpl, R"({"prompt": "x", "tokenmill": {"recompute_ratio": 0.5}})", 400,
       "tokenmill.recompute_ratio", "only allowed with 'tokenmill.segments'"},
      {cmpl, R"({"tokenmill": {"segments": ["a"], "recompute_ratio": "all"}})", 400,
       "tokenmill.recompute_ratio", "'tokenmill.recompute_ratio' must be a number, got string"},
      {cmpl, R"({"tokenmill": {"segments": ["a"]}, "echo": true})", 400, "echo",
       "not supported with 'tokenmill.segments'"},
      {cmpl, R"({"prompt": "x", "tokenmill": {"segmentz": ["a"]}})", 400, "tokenmill.segmentz",
       "unknown field 'tokenmill.segmentz'"},
      // chat chunks (the prompt as segments cut out of the rendered conversation)
      {chat, "{" + msg + R"(, "tokenmill": {"chunks": "sentences"}})", 400, "tokenmill.chunks",
       "'tokenmill.chunks' must be \"messages\" (a segment per message) or \"parts\" (also one "
       "per text content part), got \"sentences\""},
      {chat, "{" + msg + R"(, "tokenmill": {"chunks": true}})", 400, "tokenmill.chunks",
       "'tokenmill.chunks' must be \"messages\" or \"parts\", got boolean"},
      {cmpl, R"({"prompt": "x", "tokenmill": {"chunks": "parts"}})", 400, "tokenmill.chunks",
       "only supported on /v1/chat/completions"},
      {chat, "{" + msg + R"(, "tokenmill": {"chunks": "parts", "segments": ["a"]}})", 400,
       "tokenmill.segments", "only supported on /v1/completions"},
      {chat, "{" + msg + R"(, "tokenmill": {"chunks": "parts", "recompute_ratio": "x"}})", 400,
       "tokenmill.recompute_ratio", "'tokenmill.recompute_ratio' must be a number, got string"},
      {chat, "{" + msg + R"(, "tokenmill": {"recompute_ratio": 0.5}})", 400,
       "tokenmill.recompute_ratio", "or 'tokenmill.chunks' (chat)"},
      {chat,
       R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
           "tokenmill": {"chunks": "parts"}})",
       400, "messages[0].content[0].type", "only 'text' content parts are supported"},
      // logprobs
      {cmpl, R"({"prompt": "x", "logprobs": 6})", 400, "logprobs",
       "'logprobs' must be in [0, 5], got 6"},
      {cmpl, R"({"prompt": "x", "logprobs": -1})", 400, "logprobs", "must be in [0, 5]"},
      {cmpl, R"({"prompt": "x", "logprobs": true})", 400, "logprobs",
       "'logprobs' must be an integer from 0 to 5"},
      {cmpl, R"({"prompt": "x", "logprobs": "2"})", 400, "logprobs",
       "'logprobs' must be an integer, got string"},
      {cmpl, R"({"prompt": "x", "top_logprobs": 2})", 400, "top_logprobs",
       "'top_logprobs' is a chat option"},
      {chat, "{" + msg + R"(, "logprobs": 1})", 400, "logprobs", "'logprobs' must be a boolean"},
      {chat, "{" + msg + R"(, "top_logprobs": 2})", 400, "top_logprobs",
       "'top_logprobs' requires 'logprobs': true"},
      {chat, "{" + msg + R"(, "logprobs": false, "top_logprobs": 2})", 400, "top_logprobs",
       "requires 'logprobs': true"},
      {chat, "{" + msg + R"(, "logprobs": true, "top_logprobs": 21})", 400, "top_logprobs",
       "'top_logprobs' must be in [0, 20], got 21"},
      {chat, "{" + msg + R"(, "logprobs": true, "top_logprobs": -1})", 400, "top_logprobs",
       "must be in [0, 20]"},
      {chat, "{" + msg + R"(, "logprobs": true, "top_logprobs": 1.5})", 400, "top_logprobs",
       "'top_logprobs' must be an integer"},
      // penalties and logit_bias
      {cmpl, R"({"prompt": "x", "presence_penalty": 2.5})", 400, "presence_penalty",
       "'presence_penalty' must be in [-2, 2], got 2.5"},
      {chat, "{" + msg + R"(, "frequency_penalty": -2.01})", 400, "frequency_penalty",
       "'frequency_penalty' must be in [-2, 2]"},
      {cmpl, R"({"prompt": "x", "frequency_penalty": "0"})", 400, "frequency_penalty",
       "must be a number, got string"},
      {cmpl, R"({"prompt": "x", "presence_penalty": [0]})", 400, "presence_penalty",
       "must be a number, got array"},
      {cmpl, R"({"prompt": "x", "repetition_penalty": 0})", 400, "repetition_penalty",
       "'repetition_penalty' must be > 0, got 0"},
      {cmpl, R"({"prompt": "x", "repetition_penalty": -1})", 400, "repetition_penalty",
       "must be > 0"},
      {cmpl, R"({"prompt": "x", "repetition_penalty": true})", 400, "repetition_penalty",
       "must be a number, got boolean"},
      {cmpl, R"({"prompt": "x", "logit_bias": [1, 2]})", 400, "logit_bias",
       "'logit_bias' must be an object mapping token ids to biases, got array"},
      {cmpl, R"({"prompt": "x", "logit_bias": {"abc": 1}})", 400, "logit_bias.abc",
       "keys must be token ids (integers as strings), got 'abc'"},
      {cmpl, R"({"prompt": "x", "logit_bias": {"12x": 1}})", 400, "logit_bias.12x",
       "keys must be token ids"},
      {chat, "{" + msg + R"(, "logit_bias": {"5": 101}})", 400, "logit_bias.5",
       "'logit_bias.5' must be in [-100, 100], got 101"},
      {chat, "{" + msg + R"(, "logit_bias": {"5": -100.5}})", 400, "logit_bias.5",
       "must be in [-100, 100]"},
      {cmpl, R"({"prompt": "x", "logit_bias": {"5": "1"}})", 400, "logit_bias.5",
       "'logit_bias.5' must be a number, got string"},
      {cmpl, R"({"prompt": "x", "echo": true, "logprobs": 1})", 400, "echo",
       "'echo' with 'logprobs' is not supported"},
      {cmpl, R"({"prompt": "x", "echo": "no"})", 400, "echo", "'echo' must be a boolean"},
      {cmpl, R"({"prompt": "x", "n": 3, "best_of": 2})", 400, "best_of",
       "'best_of' must be in [n, 16] (n is 3), got 2"},
      {cmpl, R"({"prompt": "x", "best_of": 17})", 400, "best_of", "'best_of' must be in [n, 16]"},
      {cmpl, R"({"prompt": "x", "best_of": "2"})", 400, "best_of", "'best_of' must be an integer"},
      {cmpl, R"({"prompt": "x", "best_of": 2, "stream": true})", 400, "best_of",
       "'best_of' above 'n' cannot be streamed"},
      // streaming
      {cmpl, R"({"prompt": "x", "stream": "yes"})", 400, "stream",
       "'stream' must be a boolean, got string"},
      {cmpl, R"({"prompt": "x", "stream_options": {"include_usage": true}})", 400, "stream_options",
       "only allowed when 'stream' is true"},
      {cmpl, R"({"prompt": "x", "stream": false, "stream_options": {}})", 400, "stream_options",
       "only allowed when 'stream' is true"},
      {cmpl, R"({"prompt": "x", "stream": true, "stream_options": true})", 400, "stream_options",
       "'stream_options' must be an object"},
      {cmpl, R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": "y"}})", 400,
       "stream_options.include_usage", "must be a boolean"},
      // messages
      {chat, R"({})", 400, "messages", "'messages' is required"},
      {chat, R"({"messages": []})", 400, "messages", "'messages' must not be empty"},
      {chat, R"({"messages": "hi"})", 400, "messages", "'messages' must be an array, got string"},
      {chat, R"({"messages": ["hi"]})", 400, "messages[0]",
       "'messages[0]' must be an object, got string"},
      {chat, R"({"messages": [{"content": "hi"}]})", 400, "messages[0].role",
       "'messages[0].role' is required"},
      {chat, R"({"messages": [{"role": 1, "content": "hi"}]})", 400, "messages[0].role",
       "must be a string, got number"},
      {chat,
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "hi"}]})",
       400, "messages[1].role",
       "'messages[1].role' must be one of system, developer, user, assistant, tool; got 'robot'"},
      {chat, R"({"messages": [{"role": "user"}]})", 400, "messages[0].content",
       "'messages[0].content' is required"},
      {chat, R"({"messages": [{"role": "user", "content": 7}]})", 400, "messages[0].content",
       "must be a string or an array of content parts, got number"},
      {chat, R"({"messages": [{"role": "user", "content": ["x"]}]})", 400, "messages[0].content[0]",
       "must be an object, got string"},
      {chat, R"({"messages": [{"role": "user", "content": [{"text": "x"}]}]})", 400,
       "messages[0].content[0].type", "is required"},
      {chat,
       R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "http://x"}}]}]})",
       400, "messages[0].content[1].type",
       "'messages[0].content[1].type' is 'image_url'; only 'text' content parts are supported"},
      {chat, R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})", 400,
       "messages[0].content[0].text", "is required"},
      {chat, R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]})", 400,
       "messages[0].content[0].text", "must be a string, got number"},
  };
  for (const auto& c : cases) {
    INFO("body: " << c.body);
    const auto e = err(c.kind, c.body);
    INFO("message: " << e.message);
    CHECK(e.status == c.status);
    CHECK(e.param == c.param);
    CHECK(contains(e.message, c.message));
    CHECK(e.type == "invalid_request_error");
    CHECK(e.code == (c.status == 404 ? "model_not_found" : ""));
  }
}

TEST_CASE("logprobs, penalties and logit_bias are mapped", "[openai][logprobs]") {
  const std::string msg = R"("messages": [{"role": "user", "content": "Hi"}])";
  // Absent: no logprobs, neutral penalties.
  auto none = ok(cmpl, R"({"prompt": "x"})");
  CHECK(none.params.top_logprobs == -1);
  CHECK(none.params.logit_bias.empty());
  CHECK(none.params.sampling.presence_penalty == 0);
  CHECK(none.params.sampling.repetition_penalty == 1);
  CHECK(ok(cmpl, R"({"prompt": "x", "logprobs": null})").params.top_logprobs == -1);
  CHECK(ok(cmpl, R"({"prompt": "x", "logprobs": 0})").params.top_logprobs == 0);
  CHECK(ok(cmpl, R"({"prompt": "x", "logprobs": 5})").params.top_logprobs == 5);
  CHECK(ok(chat, "{" + msg + R"(, "logprobs": false})").params.top_logprobs == -1);
  CHECK(ok(chat, "{" + msg + R"(, "logprobs": true})").params.top_logprobs == 0);
  CHECK(ok(chat, "{" + msg + R"(, "logprobs": true, "top_logprobs": 20})").params.top_logprobs ==
        20);
  auto r = ok(chat, "{" + msg + R"(, "presence_penalty": -2, "frequency_penalty": 1.5,
      "repetition_penalty": 1.1, "logit_bias": {"17": -100, "3": 2.5}})");
  CHECK(r.params.sampling.presence_penalty == -2);
  CHECK(r.params.sampling.frequency_penalty == 1.5);
  CHECK(r.params.sampling.repetition_penalty == Approx(1.1));
  auto bias = r.params.logit_bias;
  std::sort(bias.begin(), bias.end());
  CHECK(bias == std::vector<std::pair<int64_t, double>>{{3, 2.5}, {17, -100}});
}

TEST_CASE("completions: a list of prompts, n, best_of and echo", "[openai]") {
  auto one = ok(cmpl, R"({"prompt": "x"})");
  CHECK(one.prompts.size() == 1);
  CHECK(one.n == 1);
  CHECK(one.best_of == 1);
  CHECK_FALSE(one.echo);
  auto texts = ok(cmpl, R"({"prompt": ["a", "bb"], "n": 2, "max_tokens": 3, "seed": 9})");
  REQUIRE(texts.prompts.size() == 2);
  CHECK(texts.prompts[0].text == "a");
  CHECK(texts.prompts[1].text == "bb");
  CHECK(texts.prompts[1].max_tokens == 3);  // every prompt gets the request's options
  CHECK(texts.prompts[1].sampling.seed == 9);
  CHECK(texts.params.text == "a");
  CHECK(texts.n == 2);
  CHECK(texts.best_of == 2);  // best_of defaults to n
  auto ids = ok(cmpl, R"({"prompt": [[1, 2], [3]], "best_of": 3, "echo": true})");
  REQUIRE(ids.prompts.size() == 2);
  CHECK_FALSE(ids.prompts[0].has_text);
  CHECK(ids.prompts[0].token_ids == std::vector<int64_t>{1, 2});
  CHECK(ids.prompts[1].token_ids == std::vector<int64_t>{3});
  CHECK(ids.best_of == 3);
  CHECK(ids.n == 1);
  CHECK(ids.echo);
  auto chat_n = ok(chat, R"({"messages": [{"role": "user", "content": "Hi"}], "n": 4})");
  CHECK(chat_n.n == 4);
  CHECK(chat_n.prompts.size() == 1);
}

TEST_CASE("responses with several choices", "[openai]") {
  response_meta cm{endpoint::completions, "cmpl-1", 1700000000, "tiny-model"};
  std::vector<logprob_entry> lps{{"a", -0.5f, {}, 0}};
  std::vector<choice_body> choices{{0, "first", "length", nullptr}, {1, "second", "stop", &lps}};
  generation_summary s;
  s.prompt_tokens = 4;
  s.completion_tokens = 6;
  auto j = json::parse(completion_body(cm, choices, s));
  REQUIRE(j["choices"].size() == 2);
  CHECK(j["choices"][1]["index"] == 1);
  CHECK(j["choices"][1]["text"] == "second");
  CHECK(j["choices"][1]["finish_reason"] == "stop");
  CHECK(j["choices"][0]["logprobs"].is_null());
  CHECK(j["choices"][1]["logprobs"]["tokens"] == json{"a"});
  CHECK(j["usage"]["total_tokens"] == 10);
  auto c = json::parse(stream_chunk(cm, 3, "x", false, "", false));
  CHECK(c["choices"][0]["index"] == 3);
}

TEST_CASE("an empty served model accepts any model name", "[openai]") {
  auto r = parse_request(cmpl, R"({"prompt": "x", "model": "whatever"})", {"", {}});
  CHECK(std::holds_alternative<parsed_request>(r));
}

TEST_CASE("chat rendering: system + user + assistant + user in every format", "[openai]") {
  const std::vector<chat_message> conv = {
      {"system", "You are terse."},
      {"user", "Hi"},
      {"assistant", "Hello."},
      {"user", "2+2?"},
  };
  CHECK(render_chat(chat_format::chatml, conv) ==
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n");
  CHECK(render_chat(chat_format::llama3, conv) ==
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK(render_chat(chat_format::mistral, conv) ==
        "[INST] You are terse.\n\nHi [/INST]Hello.</s>[INST] 2+2? [/INST]");
}

TEST_CASE("chat rendering edge cases", "[openai]") {
  SECTION("developer is system") {
    CHECK(render_chat(chat_format::llama3, {{"developer", "D"}}) ==
          "<|start_header_id|>system<|end_header_id|>\n\nD<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n");
    CHECK(render_chat(chat_format::mistral, {{"developer", "D"}, {"user", "U"}}) ==
          "[INST] D\n\nU [/INST]");
  }
  SECTION("mistral: several system messages join; system alone still opens a turn") {
    CHECK(render_chat(chat_format::mistral, {{"system", "A"}, {"system", "B"}, {"user", "U"}}) ==
          "[INST] A\n\nB\n\nU [/INST]");
    CHECK(render_chat(chat_format::mistral, {{"system", "S"}}) == "[INST] S [/INST]");
  }
  SECTION("trailing assistant message: a new assistant turn is still opened") {
    CHECK(render_chat(chat_format::chatml, {{"user", "U"}, {"assistant", "A"}}) ==
          "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
          "<|im_start|>assistant\n");
  }
}

namespace {
/// A message whose content was sent as text parts.
chat_message parts_message(std::string role, std::vector<std::string> parts) {
  chat_message m{std::move(role), {}};
  for (auto& t : parts) {
    m.content += t;
    m.part_ends.push_back(m.content.size());
  }
  return m;
}
/// cut_chat's pieces of `msgs`, checking on the way that the layout changes nothing in the
/// text (it is render_chat's byte for byte) and that the pieces are that text, none empty.
std::vector<std::string> pieces(chat_format f, const std::vector<chat_message>& msgs,
                                chat_chunking mode, const std::vector<tool_def>& tools = {}) {
  chat_layout layout;
  const auto text = render_chat(f, msgs, tools, layout);
  CHECK(text == render_chat(f, msgs, tools));
  auto out = cut_chat(text, layout, mode);
  std::string joined;
  for (const auto& p : out) {
    CHECK_FALSE(p.empty());
    joined += p;
  }
  CHECK(joined == text);
  return out;
}
using strings = std::vector<std::string>;
}  // namespace

TEST_CASE("chat chunking by parts: each text part is a segment of its own", "[openai]") {
  const std::vector<chat_message> conv = {
      {"system", "S"},
      parts_message("user", {"D0", "D1", "Q"}),
  };
  CHECK(pieces(chat_format::chatml, conv, chat_chunking::parts) ==
        strings{"<|im_start|>system\nS<|im_end|>\n", "<|im_start|>user\n", "D0", "D1", "Q",
                "<|im_end|>\n<|im_start|>assistant\n"});
  CHECK(pieces(chat_format::llama3, conv, chat_chunking::parts) ==
        strings{"<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>",
                "<|start_header_id|>user<|end_header_id|>\n\n", "D0", "D1", "Q",
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"});
  // mistral puts the system text into the first user turn: a string system message stays
  // with the turn's opening, the parts are cut out of it.
  CHECK(pieces(chat_format::mistral, conv, chat_chunking::parts) ==
        strings{"[INST] S\n\n", "D0", "D1", "Q", " [/INST]"});
  CHECK(pieces(chat_format::mistral, {parts_message("system", {"S"}), conv[1]},
               chat_chunking::parts) ==
        strings{"[INST] ", "S", "\n\n", "D0", "D1", "Q", " [/INST]"});
  SECTION("the same document is the same piece whatever its place, role or message") {
    const strings docs = {"first document", "second document", "third document"};
    auto conv_in = [&](std::vector<int> order, bool own_messages) {
      std::vector<chat_message> c = {{"system", "S"}};
      if (own_messages) {
        for (int d : order)
          c.push_back(parts_message(d == 1 ? "system" : "user", {docs[d]}));
        c.push_back(parts_message("user", {"question?"}));
      } else {
        strings ps;
        for (int d : order)
          ps.push_back(docs[d]);
        ps.push_back("question?");
        c.push_back(parts_message("user", ps));
      }
      return c;
    };
    for (auto f : {chat_format::chatml, chat_format::llama3, chat_format::mistral})
      for (bool own : {false, true}) {
        INFO(to_string(f) << (own ? ", a message per document" : ", one message"));
        auto a = pieces(f, conv_in({0, 1, 2}, own), chat_chunking::parts);
        auto b = pieces(f, conv_in({2, 0, 1}, own), chat_chunking::parts);
        for (const auto& d : docs) {
          CHECK(std::count(a.begin(), a.end(), d) == 1);
          CHECK(std::count(b.begin(), b.end(), d) == 1);
        }
        // Everything else (template text, system prompt) is the same set of pieces too:
        // a reordered request is made of the first one's chunks.
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        CHECK(a == b);
      }
  }
  SECTION("empty parts cut nothing; string contents stay whole with their turn") {
    CHECK(pieces(chat_format::chatml,
                 {parts_message("user", {"", "D", ""}), {"assistant", "A"}, {"user", "U"}},
                 chat_chunking::parts) ==
          strings{"<|im_start|>user\n", "D", "<|im_end|>\n", "<|im_start|>assistant\nA<|im_end|>\n",
                  "<|im_start|>user\nU<|im_end|>\n", "<|im_start|>assistant\n"});
  }
  SECTION("tools, tool calls and tool results") {
    const std::vector<tool_def> tools = {{"get_weather", "Weather", "", false}};
    chat_message call{"assistant", ""};
    call.tool_calls.push_back({"call_1", "get_weather", R"({"city": "Oslo"})"});
    chat_message result = parts_message("tool", {"sunny"});
    result.tool_call_id = "call_1";
    const std::vector<chat_message> c = {
        {"system", "S"}, parts_message("user", {"D0", "Q"}), call, result};
    auto chatml = pieces(chat_format::chatml, c, chat_chunking::parts, tools);
    CHECK(std::count(chatml.begin(), chatml.end(), "D0") == 1);
    CHECK(std::count(chatml.begin(), chatml.end(), "sunny") == 1);
    // The system prompt shares its turn with the tools block: that turn is one piece.
    CHECK(chatml[0].starts_with("<|im_start|>system\nS\n\n# Tools"));
    CHECK(chatml[0].ends_with("<|im_end|>\n"));
    auto llama3 = pieces(chat_format::llama3, c, chat_chunking::parts, tools);
    CHECK(std::count(llama3.begin(), llama3.end(), "D0") == 1);
    // The tools preamble goes with the user turn's header, before the first part.
    CHECK(llama3[1].starts_with("<|start_header_id|>user<|end_header_id|>\n\nGiven the"));
    CHECK(llama3[2] == "D0");
  }
}

TEST_CASE("chat chunking by messages: a segment per turn and one for the generation prompt",
          "[openai]") {
  const std::vector<chat_message> conv = {
      {"system", "S"},    {"user", "D0"}, parts_message("user", {"D1", "Q"}),
      {"assistant", "A"}, {"user", "U"},
  };
  CHECK(pieces(chat_format::chatml, conv, chat_chunking::messages) ==
        strings{"<|im_start|>system\nS<|im_end|>\n", "<|im_start|>user\nD0<|im_end|>\n",
                "<|im_start|>user\nD1Q<|im_end|>\n", "<|im_start|>assistant\nA<|im_end|>\n",
                "<|im_start|>user\nU<|im_end|>\n", "<|im_start|>assistant\n"});
  CHECK(pieces(chat_format::mistral, conv, chat_chunking::messages) ==
        strings{"[INST] S\n\nD0 [/INST]", "[INST] D1Q [/INST]", "A</s>", "[INST] U [/INST]"});
  CHECK(pieces(chat_format::llama3, conv, chat_chunking::messages).size() == 6);
  // Consecutive tool results share a chatml turn: each result is cut at its start.
  chat_message r1{"tool", "R1"}, r2{"tool", "R2"};
  r1.tool_call_id = "a";
  r2.tool_call_id = "b";
  CHECK(pieces(chat_format::chatml, {{"user", "U"}, r1, r2}, chat_chunking::messages) ==
        strings{"<|im_start|>user\nU<|im_end|>\n",
                "<|im_start|>user\n<tool_response>\nR1\n</tool_response>",
                "\n<tool_response>\nR2\n</tool_response><|im_end|>\n", "<|im_start|>assistant\n"});
  // none: the text whole.
  CHECK(pieces(chat_format::chatml, conv, chat_chunking::none) ==
        strings{render_chat(chat_format::chatml, conv)});
  CHECK(chat_chunking_from_name("parts") == chat_chunking::parts);
  CHECK(chat_chunking_from_name("messages") == chat_chunking::messages);
  CHECK_FALSE(chat_chunking_from_name("none").has_value());
  CHECK_FALSE(chat_chunking_from_name("Parts").has_value());
}

TEST_CASE("chat: tokenmill.chunks gives the prompt as segments", "[openai]") {
  const std::string msgs = R"("messages": [{"role": "system", "content": "S"},
      {"role": "user", "content": [{"type": "text", "text": "D0"}, {"type": "text", "text": "Q"}]}])";
  auto plain = ok(chat, "{" + msgs + "}");
  CHECK(plain.params.has_text);
  CHECK(plain.params.segments.empty());
  // The text is the same as when content is a string: parts are joined.
  CHECK(plain.params.text == ok(chat, R"({"messages": [{"role": "system", "content": "S"},
                                  {"role": "user", "content": "D0Q"}]})")
                                 .params.text);
  auto r = ok(chat, "{" + msgs + R"(, "tokenmill": {"chunks": "parts", "recompute_ratio": 0.3}})");
  const auto& p = r.params;
  CHECK_FALSE(p.has_text);
  CHECK(p.text.empty());
  CHECK(p.segments_field == "tokenmill.chunks");
  REQUIRE(p.recompute_ratio);
  CHECK(*p.recompute_ratio == 0.3);
  CHECK_FALSE(p.add_bos);  // chatml
  std::string joined;
  strings texts;
  for (const auto& s : p.segments) {
    CHECK(s.has_text);
    texts.push_back(s.text);
    joined += s.text;
  }
  CHECK(texts == strings{"<|im_start|>system\nS<|im_end|>\n", "<|im_start|>user\n", "D0", "Q",
                         "<|im_end|>\n<|im_start|>assistant\n"});
  CHECK(joined == plain.params.text);
  REQUIRE(r.prompts.size() == 1);
  CHECK(r.prompts[0].segments.size() == 5);
  // By messages, without a ratio (the server's default); llama3 keeps its BOS.
  auto m =
      ok(chat, "{" + msgs + R"(, "tokenmill": {"chunks": "messages"}})", ctx(chat_format::llama3));
  CHECK(m.params.segments.size() == 3);
  CHECK(m.params.add_bos);
  CHECK_FALSE(m.params.recompute_ratio);
}

TEST_CASE("chat: tokenmill.chunks refuses more segments than a request may have", "[openai]") {
  json body;
  for (size_t i = 0; i < max_request_segments; ++i)
    body["messages"].push_back({{"role", "user"}, {"content", "m" + std::to_string(i)}});
  body["tokenmill"] = {{"chunks", "messages"}};
  // 128 messages and the generation prompt.
  auto e = err(chat, body.dump());
  CHECK(e.status == 400);
  CHECK(e.param == "tokenmill.chunks");
  CHECK(contains(e.message, "cuts this conversation into 129 segments; at most 128"));
  body["messages"].erase(body["messages"].size() - 1);
  CHECK(ok(chat, body.dump()).params.segments.size() == 128);
  // By parts the message count is not the limit: each part counts.
  json one;
  for (int i = 0; i < 130; ++i)
    one["content"].push_back({{"type", "text"}, {"text", "p"}});
  one["role"] = "user";
  auto e2 = err(chat, json{{"messages", {one}}, {"tokenmill", {{"chunks", "parts"}}}}.dump());
  CHECK(e2.param == "tokenmill.chunks");
  CHECK(contains(e2.message, "or chunk by \"messages\""));
  CHECK(ok(chat, json{{"messages", {one}}, {"tokenmill", {{"chunks", "messages"}}}}.dump())
            .params.segments.size() == 2);
}

TEST_CASE("chat format names and detection", "[openai]") {
  for (auto f : {chat_format::chatml, chat_format::llama3, chat_format::mistral})
    CHECK(chat_format_from_name(to_string(f)) == f);
  CHECK_FALSE(chat_format_from_name("jinja").has_value());
  CHECK_FALSE(chat_format_from_name("").has_value());

  // Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template.
  const std::string llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
      "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = "
      "bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt "
      "%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
  // Qwen2-Instruct's.
  const std::string qwen2 =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
      "'<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif "
      "%}{{'<|im_start|>' "
      "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
      "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  // Mistral-7B-Instruct-v0.1's.
  const std::string mistral =
      "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
      "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
      "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ "
      "'[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
      "message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
      "assistant roles are supported!') }}{% endif %}{% endfor %}";
  // Gemma's: a format tokenmill does not render.
  const std::string gemma =
      "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + role + '\n' + "
      "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt "
      "%}{{'<start_of_turn>model\n'}}{% endif %}";
  CHECK(detect_chat_format(llama3) == chat_format::llama3);
  CHECK(detect_chat_format(qwen2) == chat_format::chatml);
  CHECK(detect_chat_format(mistral) == chat_format::mistral);
  CHECK_FALSE(detect_chat_format(gemma).has_value());
  CHECK_FALSE(detect_chat_format("").has_value());
}

TEST_CASE("error bodies and errc mapping", "[openai]") {
  SECTION("error_body with and without param/code") {
    auto j = json::parse(
        error_body({404, "invalid_request_error", "no such model", "model", "model_not_found"}));
    CHECK(j["error"]["message"] == "no such model");
    CHECK(j["error"]["type"] == "invalid_request_error");
    CHECK(j["error"]["param"] == "model");
    CHECK(j["error"]["code"] == "model_not_found");
    auto k = json::parse(error_body({500, "server_error", "boom", "", ""}));
    CHECK(k["error"]["param"].is_null());
    CHECK(k["error"]["code"].is_null());
    CHECK(k.size() == 1);
    CHECK(k["error"].size() == 4);
  }
  SECTION("every errc") {
    struct row {
      errc code;
      int status;
      std::string type;
    };
    const std::vector<row> rows = {
        {errc::ok, 500, "server_error"},
        {errc::invalid_request, 400, "invalid_request_error"},
        {errc::overloaded, 429, "rate_limit_error"},
        {errc::no_workers, 503, "server_error"},
        {errc::worker_failed, 500, "server_error"},
        {errc::cancelled, 499, "invalid_request_error"},
        {errc::kv_corrupt, 500, "server_error"},
        {errc::out_of_blocks, 500, "server_error"},
        {errc::timeout, 504, "server_error"},
        {errc::unavailable, 503, "server_error"},
        {errc::invalid_model, 500, "server_error"},
        {errc::unauthenticated, 401, "authentication_error"},
        {errc::internal, 500, "server_error"},
    };
    for (const auto& r : rows) {
      INFO(to_string(r.code));
      auto e = from_errc(r.code, "what happened");
      CHECK(e.status == r.status);
      CHECK(e.type == r.type);
      CHECK(e.message == "what happened");
      CHECK(e.param.empty());
      if (r.code == errc::invalid_request)
        CHECK(e.code.empty());
      else
        CHECK(e.code == to_string(r.code));
    }
  }
  SECTION("context errors get context_length_exceeded") {
    auto e =
        from_errc(errc::invalid_request, "prompt has 70 tokens; the model's context is 64 tokens");
    CHECK(e.status == 400);
    CHECK(e.code == "context_length_exceeded");
  }
}

TEST_CASE("finish reasons", "[openai]") {
  CHECK(finish_reason_name(finish_reason::length) == "length");
  CHECK(finish_reason_name(finish_reason::stop) == "stop");
  CHECK(finish_reason_name(finish_reason::eos) == "stop");
  CHECK(finish_reason_name(finish_reason::none).empty());
  CHECK(finish_reason_name(finish_reason::cancelled).empty());
  CHECK(finish_reason_name(finish_reason::error).empty());
}

namespace {
generation_summary summary() {
  generation_summary s;
  s.id = 77;
  s.reason = finish_reason::eos;
  s.prompt_tokens = 5;
  s.completion_tokens = 3;
  s.ttft_ms = 12.5;
  s.itl_mean_ms = 2;
  s.itl_p50_ms = 1.5;
  s.itl_p99_ms = 4;
  s.stages = {{"queue", 1}, {"prefill", 10}, {"first_token", 1.5}};
  return s;
}
void check_timing(const json& t) {
  CHECK(t["request_id"] == 77);
  CHECK(t["ttft_ms"] == 12.5);
  CHECK(t["itl_mean_ms"] == 2.0);
  CHECK(t["itl_p50_ms"] == 1.5);
  CHECK(t["itl_p99_ms"] == 4.0);
  CHECK(t["stages"]["prefill"] == 10.0);
}
}  // namespace

TEST_CASE("timing_json keeps the stage order", "[openai]") {
  const auto text = timing_json(summary());
  check_timing(json::parse(text));
  CHECK(contains(text, R"("stages":{"queue":1.0,"prefill":10.0,"first_token":1.5})"));
  CHECK(text.rfind(R"({"request_id":77,"ttft_ms":12.5,)", 0) == 0);
}

TEST_CASE("the tokenmill object says how often and why a request moved", "[openai]") {
  auto s = summary();
  auto t = json::parse(timing_json(s));
  CHECK(t["migrations"] == 0);
  CHECK(t["migration_reasons"] == json::array());
  s.migrations = 2;
  s.migration_reasons = {"worker_lost", "stalled"};
  t = json::parse(timing_json(s));
  CHECK(t["migrations"] == 2);
  CHECK(t["migration_reasons"] == json::array({"worker_lost", "stalled"}));
}

TEST_CASE("response bodies parse back with the right fields", "[openai]") {
  response_meta cm{endpoint::completions, "cmpl-1", 1700000000, "tiny-model"};
  response_meta hm{endpoint::chat_completions, "chatcmpl-1", 1700000001, "tiny-model"};
  SECTION("text completion") {
    auto j = json::parse(completion_body(cm, "Paris", summary()));
    CHECK(j["id"] == "cmpl-1");
    CHECK(j["object"] == "text_completion");
    CHECK(j["created"] == 1700000000);
    CHECK(j["model"] == "tiny-model");
    REQUIRE(j["choices"].size() == 1);
    CHECK(j["choices"][0]["index"] == 0);
    CHECK(j["choices"][0]["text"] == "Paris");
    CHECK(j["choices"][0]["logprobs"].is_null());
    CHECK(j["choices"][0]["finish_reason"] == "stop");
    CHECK(j["usage"] == json{{"prompt_tokens", 5}, {"completion_tokens", 3}, {"total_tokens", 8}});
    check_timing(j["tokenmill"]);
  }
  SECTION("chat completion; unknown finish is null") {
    auto s = summary();
    s.reason = finish_reason::cancelled;
    auto j = json::parse(completion_body(hm, "Hi \"there\"\n", s));
    CHECK(j["object"] == "chat.completion");
    CHECK(j["id"] == "chatcmpl-1");
    CHECK(j["choices"][0]["message"] == json{{"role", "assistant"}, {"content", "Hi \"there\"\n"}});
    CHECK(j["choices"][0]["finish_reason"].is_null());
    CHECK(j["usage"]["total_tokens"] == 8);
  }
  SECTION("invalid UTF-8 in text is replaced, not thrown") {
    auto j = json::parse(completion_body(cm, "ok\xE2\x82", summary()));
    CHECK(j["choices"][0]["text"] == "ok\xEF\xBF\xBD");
  }
  SECTION("completion stream chunks") {
    auto j = json::parse(stream_chunk(cm, "Par", true, "", false));
    CHECK(j["object"] == "text_completion");
    CHECK(j["choices"][0]["text"] == "Par");
    CHECK(j["choices"][0]["finish_reason"].is_null());
    CHECK_FALSE(j.contains("usage"));
    auto last = json::parse(stream_chunk(cm, "", false, "length", true));
    CHECK(last["choices"][0]["finish_reason"] == "length");
    CHECK(last.contains("usage"));
    CHECK(last["usage"].is_null());
  }
  SECTION("chat stream chunks") {
    auto first = json::parse(stream_chunk(hm, "", true, "", true));
    CHECK(first["object"] == "chat.completion.chunk");
    CHECK(first["id"] == "chatcmpl-1");
    CHECK(first["choices"][0]["index"] == 0);
    CHECK(first["choices"][0]["delta"] == json{{"role", "assistant"}, {"content", ""}});
    CHECK(first["usage"].is_null());
    auto mid = json::parse(stream_chunk(hm, "lo", false, "", false));
    CHECK(mid["choices"][0]["delta"] == json{{"content", "lo"}});
    CHECK(mid["choices"][0]["finish_reason"].is_null());
    auto end = json::parse(stream_chunk(hm, "", false, "stop", false));
    CHECK(end["choices"][0]["finish_reason"] == "stop");
  }
  SECTION("usage chunk") {
    auto j = json::parse(usage_chunk(hm, summary()));
    CHECK(j["object"] == "chat.completion.chunk");
    CHECK(j["choices"].is_array());
    CHECK(j["choices"].empty());
    CHECK(j["usage"]["prompt_tokens"] == 5);
    CHECK(j["usage"]["completion_tokens"] == 3);
    CHECK(j["usage"]["total_tokens"] == 8);
    check_timing(j["tokenmill"]);
    CHECK(json::parse(usage_chunk(cm, summary()))["object"] == "text_completion");
  }
  SECTION("models") {
    auto j = json::parse(models_body("tiny-model", 1700000000, 4096));
    CHECK(j["object"] == "list");
    REQUIRE(j["data"].size() == 1);
    CHECK(j["data"][0] == json{{"id", "tiny-model"},
                               {"object", "model"},
                               {"created", 1700000000},
                               {"owned_by", "tokenmill"},
                               {"max_model_len", 4096}});
  }
  SECTION("bodies are one line with id first") {
    const auto body = completion_body(cm, "a\nb", summary());
    CHECK(body.find('\n') == std::string::npos);
    CHECK(body.rfind(R"({"id":"cmpl-1","object":"text_completion","created":1700000000,)", 0) == 0);
  }
}

TEST_CASE("SSE framing", "[openai]") {
  CHECK(sse_event(R"({"a":1})") == "data: {\"a\":1}\n\n");
  CHECK(sse_event("") == "data: \n\n");
  CHECK(sse_event("{\n\"a\": 1\n}") == "data: {\ndata: \"a\": 1\ndata: }\n\n");
  CHECK(sse_event("x\n") == "data: x\ndata: \n\n");
  CHECK(sse_done == "data: [DONE]\n\n");
  // A chunk whose text has a newline stays one data line (JSON escapes it).
  response_meta m{endpoint::completions, "cmpl-2", 1, "m"};
  const auto ev = sse_event(stream_chunk(m, "line1\nline2", false, "", false));
  CHECK(ev.rfind("data: {", 0) == 0);
  CHECK(ev.find('\n') == ev.size() - 2);
}

TEST_CASE("logprobs in OpenAI's chat and completions shapes", "[openai][logprobs]") {
  response_meta cm{endpoint::completions, "cmpl-1", 1700000000, "tiny-model"};
  response_meta hm{endpoint::chat_completions, "chatcmpl-1", 1700000001, "tiny-model"};
  auto piece = [](token_id t) { return t == 1 ? std::string("He") : std::string("llo"); };
  std::vector<logprob_entry> entries{
      make_logprob_entry(1, token_logprobs{-0.5f, {{1, -0.5f}, {2, -1.5f}}}, piece, 0),
      make_logprob_entry(2, token_logprobs{-0.25f, {{1, -0.1f}, {2, -0.25f}}}, piece, 2),
      // -inf cannot be JSON: reported as -9999, as OpenAI does.
      make_logprob_entry(2, token_logprobs{-std::numeric_limits<float>::infinity(), {}}, piece, 5),
  };
  SECTION("chat") {
    auto j = json::parse(completion_body(hm, "Hellollo", summary(), &entries));
    const auto& lp = j["choices"][0]["logprobs"];
    CHECK(lp["refusal"].is_null());
    REQUIRE(lp["content"].size() == 3);
    const auto& c0 = lp["content"][0];
    CHECK(c0["token"] == "He");
    CHECK(c0["logprob"] == -0.5);
    CHECK(c0["bytes"] == json{72, 101});
    REQUIRE(c0["top_logprobs"].size() == 2);
    CHECK(c0["top_logprobs"][1]["token"] == "llo");
    CHECK(c0["top_logprobs"][1]["logprob"] == -1.5);
    CHECK(c0["top_logprobs"][1]["bytes"] == json{108, 108, 111});
    CHECK(lp["content"][2]["logprob"] == -9999.0);
    CHECK(lp["content"][2]["top_logprobs"] == json::array());
    // Streamed: the same object per chunk, for the chunk's tokens.
    std::vector<logprob_entry> one{entries[1]};
    auto c = json::parse(stream_chunk(hm, "llo", false, "", false, &one));
    REQUIRE(c["choices"][0]["logprobs"]["content"].size() == 1);
    CHECK(c["choices"][0]["logprobs"]["content"][0]["token"] == "llo");
  }
  SECTION("completions") {
    auto j = json::parse(completion_body(cm, "Hellollo", summary(), &entries));
    const auto& lp = j["choices"][0]["logprobs"];
    CHECK(lp["tokens"] == json{"He", "llo", "llo"});
    CHECK(lp["token_logprobs"] == json{-0.5, -0.25, -9999.0});
    CHECK(lp["text_offset"] == json{0, 2, 5});
    REQUIRE(lp["top_logprobs"].size() == 3);
    CHECK(lp["top_logprobs"][0] == json{{"He", -0.5}, {"llo", -1.5}});
    // The chosen token is always in its position's dict (vLLM's logprobs + 1).
    CHECK(lp["top_logprobs"][2] == json{{"llo", -9999.0}});
    auto c = json::parse(stream_chunk(cm, "He", false, "", false, &entries));
    CHECK(c["choices"][0]["logprobs"]["tokens"].size() == 3);
    // Not asked for: null, as before.
    CHECK(
        json::parse(stream_chunk(cm, "He", false, "", false))["choices"][0]["logprobs"].is_null());
  }
}

TEST_CASE("openai: structured output sets the request's grammar", "[frontend]") {
  const std::string msg = R"("messages": [{"role": "user", "content": "hi"}])";
  auto none = ok(chat, "{" + msg + R"(, "response_format": {"type": "text"}})");
  CHECK(none.params.sampling.grammar == grammar_kind::none);
  auto obj = ok(cmpl, R"({"prompt": "x", "response_format": {"type": "json_object"}})");
  CHECK(obj.params.sampling.grammar == grammar_kind::json_object);
  CHECK(obj.params.grammar_field == "response_format");
  // The schema keeps its keys in the order written (the output's property order).
  auto js = ok(chat, "{" + msg + R"(, "response_format": {"type": "json_schema", "json_schema":
      {"name": "p", "strict": true, "schema": {"type": "object", "properties":
      {"zeta": {"type": "integer"}, "alpha": {"type": "string"}}}}}})");
  CHECK(js.params.sampling.grammar == grammar_kind::json_schema);
  CHECK(js.params.sampling.grammar_source ==
        R"({"type":"object","properties":{"zeta":{"type":"integer"},"alpha":{"type":"string"}}})");
  CHECK(js.params.grammar_field == "response_format.json_schema.schema");
  auto re = ok(cmpl, R"({"prompt": "x", "tokenmill": {"regex": "[0-9]+"}})");
  CHECK(re.params.sampling.grammar == grammar_kind::regex);
  CHECK(re.params.sampling.grammar_source == "[0-9]+");
  CHECK(re.params.grammar_field == "tokenmill.regex");
}

TEST_CASE("chat chunks through validate: a document's tokens are its own wherever it sits",
          "[openai][validate]") {
  byte_word_tokenizer tok(1000);
  model_info m;
  m.vocab_size = 1000;
  m.max_context = 4096;
  auto prompt_of = [&](const std::string& first, const std::string& second) {
    json body{{"messages",
               {{{"role", "system"}, {"content", "S"}},
                {{"role", "user"},
                 {"content",
                  {{{"type", "text"}, {"text", first}},
                   {{"type", "text"}, {"text", second}},
                   {{"type", "text"}, {"text", "Q?"}}}}}}},
              {"max_tokens", 4},
              {"tokenmill", {{"chunks", "parts"}, {"recompute_ratio", 0.5}}}};
    auto v = validate(ok(chat, body.dump(), ctx(chat_format::mistral)).params, tok, m);
    REQUIRE(v.ok());
    return *v;
  };
  const std::string d0 = "alpha document", d1 = "beta doc";
  auto a = prompt_of(d0, d1);
  auto b = prompt_of(d1, d0);
  CHECK(a.options.recompute_ratio == 0.5f);
  // mistral: BOS, "[INST] S\n\n", the two documents, "Q?", " [/INST]".
  REQUIRE(a.options.segment_ends.size() == 6);
  REQUIRE(b.options.segment_ends.size() == 6);
  auto segment = [](const validated_request& v, size_t i) {
    const uint32_t begin = i == 0 ? 0 : v.options.segment_ends[i - 1];
    return std::vector<token_id>(v.prompt.begin() + begin,
                                 v.prompt.begin() + v.options.segment_ends[i]);
  };
  CHECK(segment(a, 0) == std::vector<token_id>{m.bos});
  CHECK(segment(a, 2) == tok.encode(d0, false));
  CHECK(segment(b, 3) == tok.encode(d0, false));
  CHECK(segment(a, 3) == segment(b, 2));
  CHECK(a.prompt.size() == b.prompt.size());
}
