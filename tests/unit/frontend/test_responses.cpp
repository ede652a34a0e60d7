#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tokenizer.hpp"
#include "frontend/responses.hpp"
#include "frontend/validate.hpp"

using namespace tokenmill;
using namespace tokenmill::responses;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

openai::request_context ctx(openai::chat_format f = openai::chat_format::chatml) {
  return {"tiny-model", f};
}
request ok(const std::string& body, const openai::request_context& c = ctx()) {
  auto r = parse_request(body, c);
  if (auto* e = std::get_if<openai::api_error>(&r)) FAIL("unexpected error: " << e->message);
  return std::get<request>(r);
}
openai::api_error err(const std::string& body) {
  auto r = parse_request(body, ctx());
  REQUIRE(std::holds_alternative<openai::api_error>(r));
  return std::get<openai::api_error>(r);
}

outcome sample_outcome(status s, std::string text) {
  outcome o;
  o.id = "resp_1";
  o.message_id = "msg_1";
  o.created_at = 1700000000;
  o.model = "tiny-model";
  o.state = s;
  o.text = std::move(text);
  o.input_tokens = 7;
  o.output_tokens = 3;
  return o;
}

/// One parsed SSE event: its `event:` name and its data.
struct sse_event {
  std::string name;
  json data;
};
std::vector<sse_event> parse_events(const std::string& stream) {
  std::vector<sse_event> out;
  size_t pos = 0;
  while (pos < stream.size()) {
    auto end = stream.find("\n\n", pos);
    REQUIRE(end != std::string::npos);
    auto frame = stream.substr(pos, end - pos);
    REQUIRE(frame.starts_with("event: "));
    auto nl = frame.find('\n');
    REQUIRE(nl != std::string::npos);
    REQUIRE(frame.substr(nl + 1).starts_with("data: "));
    CHECK(frame.find('\n', nl + 1) == std::string::npos);  // one data line
    out.push_back({frame.substr(7, nl - 7), json::parse(frame.substr(nl + 7))});
    pos = end + 2;
  }
  return out;
}

}  // namespace

TEST_CASE("responses: a string input is one user message", "[responses]") {
  auto r = ok(R"({"model": "tiny-model", "input": "Hello"})");
  REQUIRE(r.input.size() == 1);
  CHECK(r.input[0].role == "user");
  CHECK(r.input[0].content == "Hello");
  CHECK(r.model == "tiny-model");
  CHECK(r.store);  // the default, as OpenAI's
  CHECK_FALSE(r.stream);
  CHECK_FALSE(r.instructions);
  CHECK_FALSE(r.max_output_tokens);
  CHECK(r.params.max_tokens_to_context);
  CHECK(r.params.sampling.grammar == grammar_kind::none);
  CHECK(r.text_format == nlohmann::ordered_json{{"type", "text"}});
  CHECK(r.metadata == nlohmann::ordered_json::object());
}

TEST_CASE("responses: every accepted field is mapped", "[responses]") {
  auto r = ok(R"({
    "input": [
      {"role": "developer", "content": "Be brief."},
      {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi "},
                                                      {"type": "input_text", "text": "there"}]},
      {"role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
      {"role": "user", "content": "Again", "id": "msg_x", "status": "completed"}],
    "instructions": "You are terse.", "max_output_tokens": 9, "temperature": 0.7,
    "top_p": 0.5, "stream": true, "store": false, "previous_response_id": "resp_abc",
    "metadata": {"team": "a"}, "user": "u1", "parallel_tool_calls": true,
    "tools": [], "tool_choice": "auto", "reasoning": {"effort": null}, "background": false,
    "include": [], "truncation": "disabled", "service_tier": "auto"})");
  REQUIRE(r.input.size() == 4);
  CHECK(r.input[0].role == "developer");
  CHECK(r.input[1].content == "Hi there");
  CHECK(r.input[2].role == "assistant");
  CHECK(r.input[2].content == "Hello.");
  CHECK(r.input[3].content == "Again");
  CHECK(r.instructions == "You are terse.");
  CHECK(r.max_output_tokens == 9);
  CHECK(r.params.max_tokens == 9);
  CHECK_FALSE(r.params.max_tokens_to_context);
  CHECK(r.params.sampling.temperature == Approx(0.7f));
  CHECK(r.params.sampling.top_p == Approx(0.5f));
  CHECK(r.stream);
  CHECK_FALSE(r.store);
  CHECK(r.previous_response_id == "resp_abc");
  CHECK(r.metadata["team"] == "a");
}

TEST_CASE("responses: text.format selects the structured-output grammar", "[responses]") {
  SECTION("json_object") {
    auto r = ok(R"({"input": "x", "text": {"format": {"type": "json_object"}}})");
    CHECK(r.params.sampling.grammar == grammar_kind::json_object);
    CHECK(r.params.grammar_field == "text.format");
    CHECK(r.text_format["type"] == "json_object");
  }
  SECTION("json_schema keeps the schema's key order") {
    auto r = ok(R"({"input": "x", "text": {"format": {"type": "json_schema", "name": "w",
      "strict": true, "schema": {"type": "object", "properties": {"z": {"type": "integer"},
      "a": {"type": "boolean"}}, "required": ["z", "a"], "additionalProperties": false}}}})");
    CHECK(r.params.sampling.grammar == grammar_kind::json_schema);
    CHECK(r.params.grammar_field == "text.format.schema");
    const auto& src = r.params.sampling.grammar_source;
    CHECK(src.find("\"z\"") < src.find("\"a\""));
    CHECK(r.text_format["name"] == "w");
    CHECK(r.text_format["strict"] == true);
    CHECK(r.text_format["schema"]["required"][0] == "z");
  }
  SECTION("text") {
    auto r = ok(R"({"input": "x", "text": {"format": {"type": "text"}}})");
    CHECK(r.params.sampling.grammar == grammar_kind::none);
  }
}

TEST_CASE("responses: bad bodies are a 400 naming the field", "[responses]") {
  struct bad {
    const char* body;
    const char* param;
    const char* message;
  };
  const std::vector<bad> cases = {
      {R"({"input": )", "", "not valid JSON"},
      {R"([1, 2])", "", "must be a JSON object"},
      {R"({})", "input", "'input' is required"},
      {R"({"input": 5})", "input", "must be a string or an array of input items"},
      {R"({"input": []})", "input", "must not be empty"},
      {R"({"input": ["hi"]})", "input[0]", "must be an object"},
      {R"({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]})",
       "input[0].type", "only 'message' items are supported"},
      {R"({"input": [{"content": "hi"}]})", "input[0].role", "is required"},
      {R"({"input": [{"role": "tool", "content": "hi"}]})", "input[0].role",
       "must be one of user, assistant, system, developer; got 'tool'"},
      {R"({"input": [{"role": "user"}]})", "input[0].content", "is required"},
      {R"({"input": [{"role": "user", "content": 3}]})", "input[0].content",
       "must be a string or an array of content parts"},
      {R"({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"},
         {"type": "input_image", "image_url": "http://x/y.png"}]}]})",
       "input[0].content[1].type", "is 'input_image'; only 'input_text' and 'output_text'"},
      {R"({"input": [{"role": "user", "content": [{"type": "input_text"}]}]})",
       "input[0].content[0].text", "is required"},
      {R"({"input": [{"role": "user", "content": [{"text": "a"}]}]})", "input[0].content[0].type",
       "is required"},
      {R"({"input": "x", "instructions": 3})", "instructions", "must be a string"},
      {R"({"input": "x", "max_output_tokens": 0})", "max_output_tokens", "at least 1, got 0"},
      {R"({"input": "x", "max_output_tokens": 1.5})", "max_output_tokens", "must be an integer"},
      {R"({"input": "x", "temperature": 3})", "temperature", "must be in [0, 2], got 3"},
      {R"({"input": "x", "top_p": 0})", "top_p", "must be in (0, 1]"},
      {R"({"input": "x", "stream": "yes"})", "stream", "must be a boolean"},
      {R"({"input": "x", "store": 1})", "store", "must be a boolean"},
      {R"({"input": "x", "previous_response_id": ""})", "previous_response_id", "is empty"},
      {R"({"input": "x", "previous_response_id": 7})", "previous_response_id", "must be a string"},
      {R"({"input": "x", "tools": [{"type": "web_search"}]})", "tools", "not supported"},
      {R"({"input": "x", "tool_choice": "required"})", "tool_choice", "not supported"},
      {R"({"input": "x", "reasoning": {"effort": "high"}})", "reasoning", "not supported"},
      {R"({"input": "x", "background": true})", "background", "not supported"},
      {R"({"input": "x", "include": ["reasoning.encrypted_content"]})", "include", "not supported"},
      {R"({"input": "x", "truncation": "auto"})", "truncation", "only \"disabled\""},
      {R"({"input": "x", "prompt": {"id": "pmpt_1"}})", "prompt", "not supported"},
      {R"({"input": "x", "conversation": "conv_1"})", "conversation", "previous_response_id"},
      {R"({"input": "x", "top_logprobs": 2})", "top_logprobs", "not supported"},
      {R"({"input": "x", "text": "json"})", "text", "must be an object"},
      {R"({"input": "x", "text": {"format": {}}})", "text.format.type", "is required"},
      {R"({"input": "x", "text": {"format": {"type": "xml"}}})", "text.format.type",
       "must be \"text\", \"json_object\" or \"json_schema\", got \"xml\""},
      {R"({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}})",
       "text.format.name", "is required"},
      {R"({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}})",
       "text.format.schema", "is required"},
      {R"({"input": "x", "text": {"format": {"type": "json_schema", "name": "n",
         "schema": [1]}}})",
       "text.format.schema", "must be an object"},
      {R"({"input": "x", "text": {"format": {"type": "json_schema", "name": "n",
         "schema": {}, "strict": "yes"}}})",
       "text.format.strict", "must be a boolean"},
      {R"({"input": "x", "metadata": [1]})", "metadata", "must be an object of strings"},
      {R"({"input": "x", "metadata": {"k": 1}})", "metadata.k", "must be a string"},
      {R"({"input": "x", "metadata": {"k": "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"}})",
       "metadata.k", "at most 512 are allowed"},
      // chunk reuse (issue 17): the same refusals as on /v1/chat/completions
      {R"({"input": "x", "tokenmill": 3})", "tokenmill", "'tokenmill' must be an object"},
      {R"({"input": "x", "tokenmill": {"chunks": "sentences"}})", "tokenmill.chunks",
       "'tokenmill.chunks' must be \"messages\" (a segment per message) or \"parts\" (also one "
       "per text content part), got \"sentences\""},
      {R"({"input": "x", "tokenmill": {"chunks": true}})", "tokenmill.chunks",
       "'tokenmill.chunks' must be \"messages\" or \"parts\", got boolean"},
      {R"({"input": "x", "tokenmill": {"chunks": "parts", "recompute_ratio": "x"}})",
       "tokenmill.recompute_ratio", "'tokenmill.recompute_ratio' must be a number, got string"},
      {R"({"input": "x", "tokenmill": {"recompute_ratio": 0.5}})", "tokenmill.recompute_ratio",
       "only allowed with 'tokenmill.chunks'"},
      {R"({"input": "x", "tokenmill": {"chunks": "parts", "segments": ["a"]}})",
       "tokenmill.segments", "only supported on /v1/completions"},
      {R"({"input": "x", "tokenmill": {"regex": "a+"}})", "tokenmill.regex",
       "unknown field 'tokenmill.regex'"},
      {R"({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
         "tokenmill": {"chunks": "parts"}})",
       "input[0].content[0].type", "only 'input_text' and 'output_text'"},
  };
  for (const auto& c : cases) {
    INFO(c.body);
    auto e = err(c.body);
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param == c.param);
    CHECK_THAT(e.message, Catch::Contains(c.message));
  }
  SECTION("too many metadata pairs") {
    json body = {{"input", "x"}, {"metadata", json::object()}};
    for (int i = 0; i < 17; ++i)
      body["metadata"]["k" + std::to_string(i)] = "v";
    auto e = err(body.dump());
    CHECK(e.param == "metadata");
    CHECK_THAT(e.message, Catch::Contains("17 pairs; at most 16"));
  }
  SECTION("another model is a 404") {
    auto e = err(R"({"model": "gpt-4o", "input": "x"})");
    CHECK(e.status == 404);
    CHECK(e.code == "model_not_found");
    CHECK(e.param == "model");
  }
}

TEST_CASE("responses: the prompt is instructions, history, then input", "[responses]") {
  auto r = ok(R"({"input": "And now?", "instructions": "Be terse."})");
  std::vector<openai::chat_message> history = {{"user", "Hi"}, {"assistant", "Hello."}};
  auto msgs = model_messages(r, history);
  REQUIRE(msgs.size() == 4);
  CHECK(msgs[0].role == "system");
  CHECK(msgs[0].content == "Be terse.");
  CHECK(msgs[1].content == "Hi");
  CHECK(msgs[3].content == "And now?");
  auto p = prompt_params(r, history, openai::chat_format::chatml);
  CHECK(p.has_text);
  CHECK_FALSE(p.add_bos);
  CHECK(p.text == openai::render_chat(openai::chat_format::chatml, msgs));
  CHECK(p.text.ends_with("<|im_start|>assistant\n"));
  auto l = prompt_params(r, {}, openai::chat_format::llama3);
  CHECK(l.add_bos);
  CHECK(l.text.find("Hello.") == std::string::npos);
  CHECK(l.text.find("<|start_header_id|>system<|end_header_id|>\n\nBe terse.") == 0);
}

TEST_CASE("responses: tokenmill.chunks cuts the conversation as chat completions do",
          "[responses][chunks]") {
  const json parts = {{{"type", "input_text"}, {"text", "D0"}},
                      {{"type", "input_text"}, {"text", "D1"}},
                      {{"type", "input_text"}, {"text", "Q"}}};
  auto body = [&](const std::string& mode) {
    json b = {{"instructions", "S"}, {"input", {{{"role", "user"}, {"content", parts}}}}};
    if (!mode.empty()) b["tokenmill"] = {{"chunks", mode}, {"recompute_ratio", 0.25}};
    return b.dump();
  };
  // The same conversation on /v1/chat/completions: a system message and the parts.
  auto chat_prompt = [&](const std::string& mode, openai::chat_format f) {
    json chat_parts = json::array();
    for (const auto& p : parts)
      chat_parts.push_back({{"type", "text"}, {"text", p["text"]}});
    json b = {
        {"messages",
         {{{"role", "system"}, {"content", "S"}}, {{"role", "user"}, {"content", chat_parts}}}}};
    if (!mode.empty()) b["tokenmill"] = {{"chunks", mode}, {"recompute_ratio", 0.25}};
    auto r = openai::parse_request(openai::endpoint::chat_completions, b.dump(), ctx(f));
    REQUIRE(std::holds_alternative<openai::parsed_request>(r));
    return std::get<openai::parsed_request>(r).params;
  };
  auto texts = [](const generate_params& p) {
    std::vector<std::string> out;
    for (const auto& s : p.segments) {
      CHECK(s.has_text);
      out.push_back(s.text);
    }
    return out;
  };
  const auto plain = prompt_params(ok(body("")), {}, openai::chat_format::chatml);
  CHECK(plain.has_text);
  CHECK(plain.segments.empty());
  CHECK_FALSE(plain.recompute_ratio);

  auto r = ok(body("parts"));
  CHECK(r.chunks == openai::chat_chunking::parts);
  const auto p = prompt_params(r, {}, openai::chat_format::chatml);
  CHECK_FALSE(p.has_text);
  CHECK(p.text.empty());
  CHECK(p.segments_field == "tokenmill.chunks");
  REQUIRE(p.recompute_ratio);
  CHECK(*p.recompute_ratio == 0.25);
  CHECK(texts(p) == std::vector<std::string>{"<|im_start|>system\nS<|im_end|>\n",
                                             "<|im_start|>user\n", "D0", "D1", "Q",
                                             "<|im_end|>\n<|im_start|>assistant\n"});
  std::string joined;
  for (const auto& t : texts(p))
    joined += t;
  CHECK(joined == plain.text);  // only where the text is cut changes
  for (auto f :
       {openai::chat_format::chatml, openai::chat_format::llama3, openai::chat_format::mistral})
    for (const std::string mode : {"parts", "messages"}) {
      INFO(to_string(f) << " " << mode);
      const auto mine = prompt_params(ok(body(mode)), {}, f);
      const auto chat = chat_prompt(mode, f);
      CHECK(texts(mine) == texts(chat));
      CHECK(mine.add_bos == chat.add_bos);
      CHECK(mine.recompute_ratio == chat.recompute_ratio);
    }
  CHECK(prompt_params(ok(body("messages")), {}, openai::chat_format::chatml).segments.size() == 3);

  SECTION("a continued conversation keeps the earlier input's parts") {
    outcome o = sample_outcome(status::completed, "A");
    auto first = ok(body(""));
    const auto history = stored_entry(first, o, {}).conversation;
    auto next = ok(R"({"input": [{"role": "user", "content": [{"type": "input_text", "text": "D2"},
        {"type": "input_text", "text": "Q2"}]}], "tokenmill": {"chunks": "parts"}})");
    const auto t = texts(prompt_params(next, history, openai::chat_format::chatml));
    // The earlier documents are chunks of their own here too (no instructions this turn).
    CHECK(t == std::vector<std::string>{"<|im_start|>user\n", "D0", "D1", "Q", "<|im_end|>\n",
                                        "<|im_start|>assistant\nA<|im_end|>\n",
                                        "<|im_start|>user\n", "D2", "Q2",
                                        "<|im_end|>\n<|im_start|>assistant\n"});
  }
}

TEST_CASE("responses: chunks through validate, and what validate refuses", "[responses][chunks]") {
  byte_word_tokenizer tok(1000);
  model_info m;
  m.name = "tiny-model";
  m.vocab_size = 1000;
  m.max_context = 4096;
  auto prompt_of = [&](const std::string& first, const std::string& second) {
    json b = {{"input",
               {{{"role", "user"},
                 {"content",
                  {{{"type", "input_text"}, {"text", first}},
                   {{"type", "input_text"}, {"text", second}},
                   {{"type", "input_text"}, {"text", "Q?"}}}}}}},
              {"max_output_tokens", 4},
              {"tokenmill", {{"chunks", "parts"}, {"recompute_ratio", 0.5}}}};
    auto v = validate(prompt_params(ok(b.dump()), {}, openai::chat_format::llama3), tok, m);
    REQUIRE(v.ok());
    return *v;
  };
  const std::string d0 = "alpha document", d1 = "beta doc";
  auto a = prompt_of(d0, d1);
  auto b = prompt_of(d1, d0);
  CHECK(a.options.recompute_ratio == 0.5f);
  // llama3: BOS, the user turn's header, the two documents, "Q?", the end and the
  // generation prompt.
  REQUIRE(a.options.segment_ends.size() == 6);
  auto segment = [](const validated_request& v, size_t i) {
    const uint32_t begin = i == 0 ? 0 : v.options.segment_ends[i - 1];
    return std::vector<token_id>(v.prompt.begin() + begin,
                                 v.prompt.begin() + v.options.segment_ends[i]);
  };
  CHECK(segment(a, 2) == tok.encode(d0, false));
  CHECK(segment(b, 3) == tok.encode(d0, false));
  CHECK(segment(a, 3) == segment(b, 2));

  auto refused = [&](const json& b, const std::string& mention) {
    auto e = validate(prompt_params(ok(b.dump()), {}, openai::chat_format::chatml), tok, m);
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().code == errc::invalid_request);
    CHECK_THAT(e.error().message, Catch::Contains(mention));
  };
  refused({{"input", "x"}, {"tokenmill", {{"chunks", "parts"}, {"recompute_ratio", 2}}}},
          "recompute_ratio must be in [0, 1], got 2");
  json many = json::array();
  for (size_t i = 0; i < max_request_segments; ++i)
    many.push_back({{"type", "input_text"}, {"text", "p"}});
  // 128 parts, the user turn's header and its end: too many, named.
  refused(
      {{"input", {{{"role", "user"}, {"content", many}}}}, {"tokenmill", {{"chunks", "parts"}}}},
      "tokenmill.chunks lists 130 segments; at most 128 are allowed");
  // By messages the same input is two segments.
  CHECK(validate(prompt_params(ok(json{{"input", {{{"role", "user"}, {"content", many}}}},
                                       {"tokenmill", {{"chunks", "messages"}}}}
                                      .dump()),
                               {}, openai::chat_format::chatml),
                 tok, m)
            ->options.segment_ends.size() == 2);
}

TEST_CASE("responses: validate() compiles text.format and names it when refused", "[responses]") {
  byte_word_tokenizer tok(1000);
  model_info m;
  m.name = "tiny-model";
  m.vocab_size = 1000;
  m.max_context = 256;
  auto good = ok(R"({"input": "x", "max_output_tokens": 20, "text": {"format": {"type":
    "json_schema", "name": "n", "schema": {"type": "object", "properties": {"a": {"type":
    "boolean"}}, "required": ["a"], "additionalProperties": false}}}})");
  auto v = validate(prompt_params(good, {}, openai::chat_format::chatml), tok, m);
  REQUIRE(v.ok());
  CHECK(v->options.max_tokens == 20);
  CHECK(v->options.sampling.grammar == grammar_kind::json_schema);
  auto refused = ok(R"({"input": "x", "text": {"format": {"type": "json_schema", "name": "n",
    "schema": {"type": "integer", "minimum": 0}}}})");
  auto e = validate(prompt_params(refused, {}, openai::chat_format::chatml), tok, m);
  REQUIRE_FALSE(e.ok());
  CHECK_THAT(e.error().message, Catch::Contains("text.format.schema"));
  CHECK_THAT(e.error().message, Catch::Contains("minimum"));
}

TEST_CASE("responses: the response object", "[responses]") {
  auto r = ok(R"({"input": "Hi", "instructions": "Be terse.", "max_output_tokens": 3,
                  "temperature": 0.7, "metadata": {"k": "v"}})");
  SECTION("completed") {
    auto o = sample_outcome(status::in_progress, "Hello there.");
    finish(o, finish_reason::eos, errc::ok, "", 7, 3);
    CHECK(o.state == status::completed);
    auto j = json::parse(response_body(r, o));
    CHECK(j["id"] == "resp_1");
    CHECK(j["object"] == "response");
    CHECK(j["created_at"] == 1700000000);
    CHECK(j["status"] == "completed");
    CHECK(j["error"].is_null());
    CHECK(j["incomplete_details"].is_null());
    CHECK(j["model"] == "tiny-model");
    CHECK(j["instructions"] == "Be terse.");
    CHECK(j["max_output_tokens"] == 3);
    CHECK(j["temperature"] == 0.7);  // as written, not 0.699999988
    CHECK(j["top_p"] == 1.0);
    CHECK(j["previous_response_id"].is_null());
    CHECK(j["store"] == true);
    CHECK(j["metadata"] == json{{"k", "v"}});
    CHECK(j["text"]["format"]["type"] == "text");
    REQUIRE(j["output"].size() == 1);
    const auto& item = j["output"][0];
    CHECK(item["type"] == "message");
    CHECK(item["id"] == "msg_1");
    CHECK(item["status"] == "completed");
    CHECK(item["role"] == "assistant");
    REQUIRE(item["content"].size() == 1);
    CHECK(item["content"][0] ==
          json{{"type", "output_text"}, {"text", "Hello there."}, {"annotations", json::array()}});
    CHECK(j["usage"]["input_tokens"] == 7);
    CHECK(j["usage"]["output_tokens"] == 3);
    CHECK(j["usage"]["total_tokens"] == 10);
    CHECK(j["usage"]["input_tokens_details"]["cached_tokens"] == 0);
    CHECK(j["usage"]["output_tokens_details"]["reasoning_tokens"] == 0);
  }
  SECTION("cut at max_output_tokens: incomplete") {
    auto o = sample_outcome(status::in_progress, "Hel");
    finish(o, finish_reason::length, errc::ok, "", 7, 3);
    CHECK(o.state == status::incomplete);
    auto j = json::parse(response_body(r, o));
    CHECK(j["status"] == "incomplete");
    CHECK(j["incomplete_details"] == json{{"reason", "max_output_tokens"}});
    CHECK(j["output"][0]["status"] == "incomplete");
    CHECK(j["output"][0]["content"][0]["text"] == "Hel");
  }
  SECTION("a stop string ends it as completed") {
    auto o = sample_outcome(status::in_progress, "x");
    finish(o, finish_reason::stop, errc::ok, "", 1, 1);
    CHECK(o.state == status::completed);
  }
  SECTION("failed") {
    auto o = sample_outcome(status::in_progress, "par");
    finish(o, finish_reason::error, errc::unavailable, "worker lost", 7, 1);
    CHECK(o.state == status::failed);
    auto j = json::parse(response_body(r, o));
    CHECK(j["status"] == "failed");
    CHECK(j["error"] == json{{"code", "unavailable"}, {"message", "worker lost"}});
    CHECK(j["output"].empty());
  }
  SECTION("in progress: no output, no usage") {
    auto j = json::parse(response_body(r, sample_outcome(status::in_progress, "")));
    CHECK(j["status"] == "in_progress");
    CHECK(j["output"].empty());
    CHECK(j["usage"].is_null());
  }
  SECTION("invalid UTF-8 in the output is replaced, not thrown") {
    auto o = sample_outcome(status::completed, std::string("ok\xff", 3));
    auto j = json::parse(response_body(r, o));
    CHECK(j["output"][0]["content"][0]["text"] == "ok\xEF\xBF\xBD");
  }
}

TEST_CASE("responses: streamed events in OpenAI's order, numbered", "[responses]") {
  auto r = ok(R"({"input": "Hi", "stream": true})");
  auto o = sample_outcome(status::in_progress, "");
  event_stream ev;
  std::string s = ev.start(r, o);
  for (std::string piece : {"Hel", "", "lo", " there"}) {
    o.text += piece;
    s += ev.delta(o, piece);
  }
  finish(o, finish_reason::eos, errc::ok, "", 4, 3);
  s += ev.end(r, o);
  auto events = parse_events(s);
  const std::vector<std::string> want = {
      "response.created",           "response.in_progress",
      "response.output_item.added", "response.content_part.added",
      "response.output_text.delta", "response.output_text.delta",
      "response.output_text.delta", "response.output_text.done",
      "response.content_part.done", "response.output_item.done",
      "response.completed"};
  REQUIRE(events.size() == want.size());
  CHECK(ev.count() == want.size());
  std::string joined;
  for (size_t i = 0; i < events.size(); ++i) {
    INFO(i);
    CHECK(events[i].name == want[i]);
    CHECK(events[i].data["type"] == want[i]);
    CHECK(events[i].data["sequence_number"] == i);
    if (events[i].name == "response.output_text.delta") {
      CHECK(events[i].data["item_id"] == "msg_1");
      CHECK(events[i].data["output_index"] == 0);
      CHECK(events[i].data["content_index"] == 0);
      joined += events[i].data["delta"].get<std::string>();
    }
  }
  CHECK(joined == "Hello there");
  CHECK(events[0].data["response"]["status"] == "in_progress");
  CHECK(events[0].data["response"]["output"].empty());
  CHECK(events[2].data["item"]["status"] == "in_progress");
  CHECK(events[2].data["item"]["content"].empty());
  CHECK(events[3].data["part"]["text"] == "");
  CHECK(events[7].data["text"] == "Hello there");
  CHECK(events[8].data["part"]["text"] == "Hello there");
  CHECK(events[9].data["item"]["content"][0]["text"] == "Hello there");
  const auto& done = events[10].data["response"];
  CHECK(done["status"] == "completed");
  CHECK(done["output"][0]["content"][0]["text"] == "Hello there");
  CHECK(done["usage"]["total_tokens"] == 7);
}

TEST_CASE("responses: a cut stream ends with response.incomplete", "[responses]") {
  auto r = ok(R"({"input": "Hi", "stream": true, "max_output_tokens": 1})");
  auto o = sample_outcome(status::in_progress, "");
  event_stream ev;
  std::string s = ev.start(r, o) + ev.delta(o, "Hel");
  o.text = "Hel";
  finish(o, finish_reason::length, errc::ok, "", 4, 1);
  s += ev.end(r, o);
  auto events = parse_events(s);
  REQUIRE(events.size() == 9);
  CHECK(events.back().name == "response.incomplete");
  CHECK(events.back().data["response"]["incomplete_details"]["reason"] == "max_output_tokens");
}

TEST_CASE("responses: an error mid-stream is response.failed and an error event", "[responses]") {
  auto r = ok(R"({"input": "Hi", "stream": true})");
  auto o = sample_outcome(status::in_progress, "");
  event_stream ev;
  std::string s = ev.start(r, o) + ev.delta(o, "Hel");
  o.text = "Hel";
  finish(o, finish_reason::error, errc::unavailable, "decode worker lost", 4, 1);
  s += ev.end(r, o);
  auto events = parse_events(s);
  REQUIRE(events.size() == 7);
  CHECK(events[5].name == "response.failed");
  CHECK(events[5].data["response"]["status"] == "failed");
  CHECK(events[5].data["response"]["error"]["message"] == "decode worker lost");
  CHECK(events[6].name == "error");
  CHECK(events[6].data["type"] == "error");
  CHECK(events[6].data["code"] == "unavailable");
  CHECK(events[6].data["message"] == "decode worker lost");
  CHECK(events[6].data["sequence_number"] == 6);
}

TEST_CASE("responses: what is stored, and GET and DELETE of it", "[responses]") {
  auto r = ok(R"({"input": "Again", "instructions": "Be terse."})");
  auto o = sample_outcome(status::in_progress, "Sure.");
  finish(o, finish_reason::eos, errc::ok, "", 5, 2);
  std::vector<openai::chat_message> history = {{"user", "Hi"}, {"assistant", "Hello."}};
  auto e = stored_entry(r, o, history);
  REQUIRE(e.conversation.size() == 4);  // instructions are not carried over
  CHECK(e.conversation[0].content == "Hi");
  CHECK(e.conversation[2].role == "user");
  CHECK(e.conversation[2].content == "Again");
  CHECK(e.conversation[3].role == "assistant");
  CHECK(e.conversation[3].content == "Sure.");
  CHECK(e.body == response_body(r, o));

  response_store store;
  const auto t0 = response_store::clock::time_point{};
  REQUIRE(store.put(o.id, e, t0));
  auto got = stored_answer("GET", "/v1/responses/resp_1", store, t0);
  REQUIRE(std::holds_alternative<std::string>(got));
  CHECK(std::get<std::string>(got) == e.body);
  auto missing = stored_answer("GET", "/v1/responses/resp_nope", store, t0);
  REQUIRE(std::holds_alternative<openai::api_error>(missing));
  CHECK(std::get<openai::api_error>(missing).status == 404);
  CHECK(std::get<openai::api_error>(missing).message ==
        "response 'resp_nope' not found (responses are kept 3600 s)");
  auto wrong = stored_answer("PUT", "/v1/responses/resp_1", store, t0);
  REQUIRE(std::holds_alternative<openai::api_error>(wrong));
  CHECK(std::get<openai::api_error>(wrong).status == 405);
  auto sub = stored_answer("GET", "/v1/responses/resp_1/cancel", store, t0);
  REQUIRE(std::holds_alternative<openai::api_error>(sub));
  CHECK(std::get<openai::api_error>(sub).status == 404);
  auto del = stored_answer("DELETE", "/v1/responses/resp_1", store, t0);
  REQUIRE(std::holds_alternative<std::string>(del));
  CHECK(json::parse(std::get<std::string>(del)) ==
        json{{"id", "resp_1"}, {"object", "response.deleted"}, {"deleted", true}});
  CHECK(std::holds_alternative<openai::api_error>(
      stored_answer("DELETE", "/v1/responses/resp_1", store, t0)));
  CHECK(std::holds_alternative<openai::api_error>(
      stored_answer("GET", "/v1/responses/resp_1", store, t0)));
  // Past the TTL a stored response is gone.
  REQUIRE(store.put(o.id, e, t0));
  CHECK(std::holds_alternative<openai::api_error>(
      stored_answer("GET", "/v1/responses/resp_1", store, t0 + 3600s)));
}

TEST_CASE("responses: not_found names previous_response_id and the TTL", "[responses]") {
  auto e = not_found("resp_x", "previous_response_id", 3600s);
  CHECK(e.status == 404);
  CHECK(e.param == "previous_response_id");
  CHECK(e.message == "previous_response_id 'resp_x' not found (responses are kept 3600 s)");
}

TEST_CASE("responses: ids are a prefix and 32 hex digits", "[responses]") {
  auto id = make_id("resp_", 0x1234, 0xabcdef);
  CHECK(id ==
        "resp_0000000000001234"
        "0000000000abcdef");
  CHECK(make_id("msg_", 1, 2) != make_id("msg_", 1, 3));
}

TEST_CASE("responses: input_items lists the request's own input, paged", "[responses]") {
  auto r = ok(R"({"input": [{"role": "developer", "content": "Plain words."},
                            {"role": "user", "content": "Again"},
                            {"role": "assistant", "content": "Said."},
                            {"role": "user", "content": "Once more"}],
                  "instructions": "Be terse."})");
  auto o = sample_outcome(status::in_progress, "Sure.");
  finish(o, finish_reason::eos, errc::ok, "", 5, 2);
  std::vector<openai::chat_message> history = {{"user", "Hi"}, {"assistant", "Hello."}};
  auto e = stored_entry(r, o, history);
  CHECK(e.inherited == 2);
  response_store store;
  const auto t0 = response_store::clock::time_point{};
  REQUIRE(store.put(o.id, e, t0));
  auto list = [&](const std::string& target) {
    auto a = stored_answer("GET", target, store, t0);
    if (auto* err = std::get_if<openai::api_error>(&a)) FAIL(err->message);
    return json::parse(std::get<std::string>(a));
  };
  auto texts = [](const json& j) {
    std::vector<std::string> out;
    for (const auto& item : j["data"])
      out.push_back(item["content"][0]["text"]);
    return out;
  };

  auto all = list("/v1/responses/resp_1/input_items");
  CHECK(all["object"] == "list");
  // Newest first, only this request's input: no earlier turn, no instructions, no output.
  CHECK(texts(all) == std::vector<std::string>{"Once more", "Said.", "Again", "Plain words."});
  CHECK(all["has_more"] == false);
  CHECK(all["first_id"] == all["data"][0]["id"]);
  CHECK(all["last_id"] == all["data"][3]["id"]);
  CHECK(all["data"][1]["role"] == "assistant");
  CHECK(all["data"][1]["content"][0]["type"] == "output_text");
  CHECK(all["data"][0]["content"][0]["type"] == "input_text");
  CHECK(all["data"][0]["type"] == "message");
  CHECK(all["data"][0]["id"].get<std::string>().starts_with("msg_"));

  auto asc = list("/v1/responses/resp_1/input_items?order=asc&limit=2");
  CHECK(texts(asc) == std::vector<std::string>{"Plain words.", "Again"});
  CHECK(asc["has_more"] == true);
  auto next = list("/v1/responses/resp_1/input_items?order=asc&limit=2&after=" +
                   asc["last_id"].get<std::string>());
  CHECK(texts(next) == std::vector<std::string>{"Said.", "Once more"});
  CHECK(next["has_more"] == false);
  // The ids are stable: the same item has the same id in either order.
  CHECK(next["data"][1]["id"] == all["data"][0]["id"]);

  auto bad = [&](const std::string& target, const std::string& param, const std::string& msg) {
    INFO(target);
    auto a = stored_answer("GET", target, store, t0);
    REQUIRE(std::holds_alternative<openai::api_error>(a));
    const auto& err = std::get<openai::api_error>(a);
    CHECK(err.status == 400);
    CHECK(err.param == param);
    CHECK_THAT(err.message, Catch::Contains(msg));
  };
  bad("/v1/responses/resp_1/input_items?order=up", "order", "must be asc or desc");
  bad("/v1/responses/resp_1/input_items?limit=0", "limit", "from 1 to 100");
  bad("/v1/responses/resp_1/input_items?limit=101", "limit", "from 1 to 100");
  bad("/v1/responses/resp_1/input_items?limit=x", "limit", "from 1 to 100");
  bad("/v1/responses/resp_1/input_items?after=msg_nope", "after", "names no input item");
  auto del = stored_answer("DELETE", "/v1/responses/resp_1/input_items", store, t0);
  REQUIRE(std::holds_alternative<openai::api_error>(del));
  CHECK(std::get<openai::api_error>(del).status == 405);
  auto missing = stored_answer("GET", "/v1/responses/resp_2/input_items", store, t0);
  REQUIRE(std::holds_alternative<openai::api_error>(missing));
  CHECK(std::get<openai::api_error>(missing).status == 404);
  // A query on the response itself is ignored.
  CHECK(std::holds_alternative<std::string>(
      stored_answer("GET", "/v1/responses/resp_1?include=x", store, t0)));
}
