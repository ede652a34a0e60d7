// Tool calls in the OpenAI API: the output parsers (Hermes/Qwen and Llama 3), whole and
// streamed, the constraining regex, the rendering of tools and tool turns in each chat
// format, the request fields and their 400s, and the response bodies.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "frontend/openai.hpp"
#include "frontend/tool_calls.hpp"
#include "grammar/json_schema.hpp"
#include "grammar/regex.hpp"

using namespace tokenmill;
using namespace tokenmill::openai;
using nlohmann::json;

namespace {

request_context ctx(chat_format f = chat_format::chatml) {
  return {"m", f};
}
parsed_request ok(const std::string& body, chat_format f = chat_format::chatml) {
  auto r = parse_request(endpoint::chat_completions, body, ctx(f));
  if (auto* e = std::get_if<api_error>(&r)) FAIL("unexpected error: " << e->message);
  return std::get<parsed_request>(r);
}
api_error err(const std::string& body, chat_format f = chat_format::chatml) {
  auto r = parse_request(endpoint::chat_completions, body, ctx(f));
  REQUIRE(std::holds_alternative<api_error>(r));
  return std::get<api_error>(r);
}

/// The output pushed one byte at a time, events concatenated.
tool_output streamed(tool_syntax s, std::string_view text, size_t max_calls = SIZE_MAX) {
  tool_call_stream st(s, max_calls);
  tool_output all;
  auto add = [&](tool_output o) {
    all.content += o.content;
    for (auto& c : o.calls)
      all.calls.push_back(std::move(c));
  };
  for (char c : text)
    add(st.push(std::string_view(&c, 1)));
  add(st.finish());
  return all;
}

const std::string weather_tool = R"({"type": "function", "function": {"name": "get_weather",
  "description": "Weather in a city", "parameters": {"type": "object", "properties": {
  "city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
  "required": ["city", "days"], "additionalProperties": false}, "strict": true}})";
const std::string time_tool = R"({"type": "function", "function": {"name": "get_time"}})";
const std::string user_msg = R"("messages": [{"role": "user", "content": "Hi"}])";

}  // namespace

TEST_CASE("tool calls: the Hermes parser", "[openai][tools]") {
  const auto h = tool_syntax::hermes;
  SECTION("one call after text") {
    const std::string text =
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
        "\"Paris\", \"days\": 2}}\n</tool_call>";
    auto out = parse_tool_calls(h, text);
    CHECK(out.content == "Let me check.");
    REQUIRE(out.calls.size() == 1);
    CHECK(out.calls[0].name == "get_weather");
    CHECK(out.calls[0].arguments == R"({"city":"Paris","days":2})");
    CHECK(out.calls[0].id.empty());
    auto s = streamed(h, text);
    CHECK(s.content == out.content);
    REQUIRE(s.calls.size() == 1);
    CHECK(s.calls[0].arguments == out.calls[0].arguments);
  }
  SECTION("two calls, arguments as a string, keys in the order written") {
    auto out = parse_tool_calls(
        h,
        "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"z\": 1, \"b\": [true]}}\n</tool_call>\n"
        "<tool_call>{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": null}\"}</tool_call>\n");
    CHECK(out.content.empty());
    REQUIRE(out.calls.size() == 2);
    CHECK(out.calls[0].arguments == R"({"z":1,"b":[true]})");
    CHECK(out.calls[1].name == "b");
    CHECK(out.calls[1].arguments == R"({"x":null})");
  }
  SECTION("absent arguments are an empty object") {
    auto out = parse_tool_calls(h, "<tool_call>{\"name\": \"now\"}</tool_call>");
    REQUIRE(out.calls.size() == 1);
    CHECK(out.calls[0].arguments == "{}");
  }
  SECTION("malformed calls stay in the content as written") {
    const std::string bad = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": }\n</tool_call>";
    auto out = parse_tool_calls(h, "Hi " + bad + " bye");
    CHECK(out.calls.empty());
    CHECK(out.content == "Hi " + bad + " bye");
    CHECK(parse_tool_calls(h, "<tool_call>{\"arguments\": {}}</tool_call>").calls.empty());
    CHECK(parse_tool_calls(h, "<tool_call>{\"name\": 3}</tool_call>").calls.empty());
    CHECK(parse_tool_calls(h, "<tool_call>{\"name\": \"\"}</tool_call>").calls.empty());
    CHECK(parse_tool_calls(h, "<tool_call>{\"name\": \"a\", \"arguments\": [1]}</tool_call>")
              .calls.empty());
    CHECK(parse_tool_calls(h, "<tool_call>{\"name\": \"a\", \"arguments\": \"[1]\"}</tool_call>")
              .calls.empty());
    CHECK(parse_tool_calls(h, "<tool_call>[1, 2]</tool_call>").content ==
          "<tool_call>[1, 2]</tool_call>");
  }
  SECTION("a good call next to a bad one") {
    auto out =
        parse_tool_calls(h, "<tool_call>{\"name\": \"a\"}</tool_call><tool_call>{oops</tool_call>");
    REQUIRE(out.calls.size() == 1);
    CHECK(out.calls[0].name == "a");
    CHECK(out.content == "<tool_call>{oops</tool_call>");
  }
  SECTION("cut off inside a call: whole JSON counts, a fragment is content") {
    auto whole = parse_tool_calls(h, "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n");
    REQUIRE(whole.calls.size() == 1);
    auto cut = parse_tool_calls(h, "x <tool_call>\n{\"name\": \"a\", \"argu");
    CHECK(cut.calls.empty());
    CHECK(cut.content == "x <tool_call>\n{\"name\": \"a\", \"argu");
  }
  SECTION("calls beyond max_calls are content") {
    auto out = parse_tool_calls(
        h, "<tool_call>{\"name\": \"a\"}</tool_call>\n<tool_call>{\"name\": \"b\"}</tool_call>", 1);
    REQUIRE(out.calls.size() == 1);
    CHECK(out.calls[0].name == "a");
    CHECK(out.content == "<tool_call>{\"name\": \"b\"}</tool_call>");
  }
  SECTION("plain text passes through, trimmed") {
    auto out = parse_tool_calls(h, "\n  Just text <tool> and <tool_cal\n");
    CHECK(out.calls.empty());
    CHECK(out.content == "Just text <tool> and <tool_cal");
    CHECK(streamed(h, "\n  Just text <tool> and <tool_cal\n").content == out.content);
  }
  SECTION("streaming holds back a partial tag and sends the call when it closes") {
    tool_call_stream st(h);
    CHECK(st.push("Sure").content == "Sure");
    CHECK(st.push(". <tool").content == ".");  // " <tool" may start a call
    auto a = st.push("_call>\n{\"name\": \"a\", ");
    CHECK(a.content.empty());
    CHECK(a.calls.empty());
    auto b = st.push("\"arguments\": {\"k\": \"v\"}}\n</tool_call> after");
    REQUIRE(b.calls.size() == 1);
    CHECK(b.calls[0].arguments == R"({"k":"v"})");
    CHECK(b.content == "  after");  // the space held back before the call, and its own
    CHECK(st.calls() == 1);
    auto end = st.finish();
    CHECK(end.content.empty());
    CHECK(end.calls.empty());
  }
  SECTION("streaming a false start of a tag sends it as content") {
    tool_call_stream st(h);
    CHECK(st.push("a <tool_").content == "a");
    CHECK(st.push("box> b").content == " <tool_box> b");
  }
}

TEST_CASE("tool calls: the Llama 3 parser", "[openai][tools]") {
  const auto l = tool_syntax::llama3;
  SECTION("one call, with or without the python tag") {
    for (std::string prefix : {"", " \n", "<|python_tag|>"}) {
      auto out = parse_tool_calls(l, prefix + R"({"name": "f", "parameters": {"x": 1}})");
      INFO(prefix);
      CHECK(out.content.empty());
      REQUIRE(out.calls.size() == 1);
      CHECK(out.calls[0].name == "f");
      CHECK(out.calls[0].arguments == R"({"x":1})");
    }
  }
  SECTION("several calls joined by ';', 'arguments' accepted too") {
    const std::string text =
        R"({"name": "f", "parameters": {"s": "a;b}"}}; {"name": "g", "arguments": {}};)";
    auto out = parse_tool_calls(l, text);
    REQUIRE(out.calls.size() == 2);
    CHECK(out.calls[0].arguments == R"({"s":"a;b}"})");
    CHECK(out.calls[1].name == "g");
    auto s = streamed(l, text);
    REQUIRE(s.calls.size() == 2);
    CHECK(s.content.empty());
  }
  SECTION("anything that is not all calls is content, unchanged") {
    for (std::string text :
         {"Hello there", R"(The call: {"name": "f", "parameters": {}})",
          R"({"name": "f", "parameters": {}} and then)", R"({"name": "f", "parameters": [1]})",
          R"({"parameters": {}})", R"({"name": "f", "parameters": {)", "{not json}",
          "<|python_tag|>print(1)"}) {
      INFO(text);
      auto out = parse_tool_calls(l, text);
      CHECK(out.calls.empty());
      CHECK(out.content == text);
      CHECK(streamed(l, text).content == text);
    }
  }
  SECTION("more calls than max_calls: content") {
    auto out = parse_tool_calls(l, R"({"name": "f"}; {"name": "g"})", 1);
    CHECK(out.calls.empty());
    CHECK(out.content == R"({"name": "f"}; {"name": "g"})");
  }
  SECTION("streaming sends text as soon as it cannot be a call") {
    tool_call_stream st(l);
    CHECK(st.push("  ").content.empty());
    CHECK(st.push("<|py").content.empty());  // may be the python tag
    CHECK(st.push("thon rocks").content == "<|python rocks");
    CHECK(st.push(" indeed").content == " indeed");
    tool_call_stream calls(l);
    CHECK(calls.push(R"({"name": "f", )").content.empty());
    CHECK(calls.push(R"("parameters": {}})").calls.empty());  // more calls may follow
    auto end = calls.finish();
    REQUIRE(end.calls.size() == 1);
    CHECK(end.calls[0].name == "f");
  }
}

TEST_CASE("tool calls: the constraining regex matches what the parser reads", "[openai][tools]") {
  auto args = grammar::json_schema_to_regex(
      R"({"type": "object", "properties": {"city": {"type": "string", "maxLength": 5}},
          "required": ["city"], "additionalProperties": false})");
  REQUIRE(args.ok());
  for (auto syntax : {tool_syntax::hermes, tool_syntax::llama3}) {
    auto d = grammar::compile_regex(tool_call_regex(syntax, "get_weather", *args));
    REQUIRE(d.ok());
    const std::string good = syntax == tool_syntax::hermes
                                 ? "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                                   "{\"city\": \"Paris\"}}\n</tool_call>"
                                 : R"({"name": "get_weather", "parameters": {"city": "Paris"}})";
    CHECK(d->matches(good));
    auto out = parse_tool_calls(syntax, good);
    REQUIRE(out.calls.size() == 1);
    CHECK(out.calls[0].name == "get_weather");
    CHECK(out.calls[0].arguments == R"({"city":"Paris"})");
    std::string other = good;
    other.replace(other.find("get_weather"), 11, "get_weathex");
    CHECK_FALSE(d->matches(other));
    std::string extra = good;
    extra.replace(extra.find("\"Paris\""), 7, "\"Paris\", \"x\": 1");
    CHECK_FALSE(d->matches(extra));
  }
}

TEST_CASE("tool calls: python_json spacing", "[openai][tools]") {
  CHECK(python_json(R"({"b":[1,2.5,"x"],"a":{"c":null}})") ==
        R"({"b": [1, 2.5, "x"], "a": {"c": null}})");
  CHECK(python_json("not json") == "not json");
}

TEST_CASE("tool calls: tools and tool turns in the chatml (Hermes/Qwen) format",
          "[openai][tools]") {
  auto r = ok(R"({"messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Weather?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"days\":1}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
      {"role": "tool", "tool_call_id": "call_2", "content": "warm"}],
    "tools": [)" +
              weather_tool + "]}");
  CHECK(r.tools_choice == tool_choice::automatic);
  REQUIRE(r.tool_parse.has_value());
  CHECK(*r.tool_parse == tool_syntax::hermes);
  CHECK(r.params.sampling.grammar == grammar_kind::none);  // auto: not constrained
  REQUIRE(r.tools.size() == 1);
  CHECK(r.tools[0].name == "get_weather");
  CHECK(r.tools[0].description == "Weather in a city");
  CHECK(r.tools[0].strict);
  CHECK(r.max_tool_calls() > 1);
  CHECK(
      r.params.text ==
      "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to "
      "assist with the user query.\n\nYou are provided with function signatures within "
      "<tools></tools> XML tags:\n<tools>\n"
      R"({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}}, "required": ["city", "days"], "additionalProperties": false}}})"
      "\n</tools>\n\nFor each function call, return a json object with function name and "
      "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
      "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
      "<|im_start|>user\nWeather?<|im_end|>\n"
      "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
      "{\"city\": \"Paris\", \"days\": 1}}\n</tool_call><|im_end|>\n"
      "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nwarm\n"
      "</tool_response><|im_end|>\n<|im_start|>assistant\n");
  SECTION("no system message: the tools are the system turn") {
    auto t = ok("{" + user_msg + R"(, "tools": [)" + time_tool + "]}");
    CHECK(t.params.text.rfind("<|im_start|>system\n# Tools\n\n", 0) == 0);
    CHECK(t.params.text.find(R"("parameters": {"type": "object", "properties": {}})") !=
          std::string::npos);
  }
  SECTION("tool_choice none: tools are not shown and output is not parsed") {
    auto t = ok("{" + user_msg + R"(, "tool_choice": "none", "tools": [)" + time_tool + "]}");
    CHECK(t.tools_choice == tool_choice::none);
    CHECK_FALSE(t.tool_parse.has_value());
    CHECK(t.params.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  }
}

TEST_CASE("tool calls: tools and tool turns in the llama3 format", "[openai][tools]") {
  auto r = ok(R"({"messages": [
      {"role": "system", "content": "S"},
      {"role": "user", "content": "Weather?"},
      {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "get_time", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "noon"}],
    "tools": [)" + time_tool +
                  "]}",
              chat_format::llama3);
  REQUIRE(r.tool_parse.has_value());
  CHECK(*r.tool_parse == tool_syntax::llama3);
  CHECK(r.params.text ==
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please "
        "respond with a JSON for a function call with its proper arguments that best answers "
        "the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
        "dictionary of argument name and its value}.Do not use variables.\n\n"
        "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_time\",\n"
        "        \"parameters\": {\n            \"type\": \"object\",\n            "
        "\"properties\": {}\n        }\n    }\n}\n\nWeather?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_time\", "
        "\"parameters\": {}}<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\nnoon<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST_CASE("tool calls: required and named choices constrain the output", "[openai][tools]") {
  SECTION("a named function: one call of it, arguments under its schema") {
    auto r = ok("{" + user_msg + R"(, "tools": [)" + weather_tool + "," + time_tool +
                R"(], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})");
    CHECK(r.tools_choice == tool_choice::named);
    CHECK(r.tool_choice_name == "get_weather");
    CHECK(r.max_tool_calls() == 1);
    CHECK(r.params.sampling.grammar == grammar_kind::regex);
    CHECK(r.params.grammar_field == "tool_choice");
    auto d = grammar::compile_regex(r.params.sampling.grammar_source);
    REQUIRE(d.ok());
    CHECK(
        d->matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\","
                   " \"days\": 3}}\n</tool_call>"));
    CHECK_FALSE(
        d->matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                   "{\"city\": \"Oslo\"}}\n</tool_call>"));  // days is required
    CHECK_FALSE(
        d->matches("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"));
    CHECK(r.prompts.size() == 1);
    CHECK(r.prompts[0].sampling.grammar_source == r.params.sampling.grammar_source);
  }
  SECTION("required: any one of the tools") {
    auto r = ok("{" + user_msg + R"(, "tools": [)" + weather_tool + "," + time_tool +
                    R"(], "tool_choice": "required"})",
                chat_format::llama3);
    CHECK(r.tools_choice == tool_choice::required);
    auto d = grammar::compile_regex(r.params.sampling.grammar_source);
    REQUIRE(d.ok());
    CHECK(d->matches(R"({"name": "get_time", "parameters": {}})"));
    CHECK(d->matches(R"({"name": "get_weather", "parameters": {"city": "a", "days": 1}})"));
    CHECK_FALSE(d->matches(
        R"({"name": "get_time", "parameters": {}}; {"name": "get_time", "parameters": {}})"));
    CHECK_FALSE(d->matches("Hello"));
  }
  SECTION("auto does not compile schemas, so any schema is accepted") {
    auto r = ok("{" + user_msg +
                R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters":
                    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}}]})");
    CHECK(r.tools_choice == tool_choice::automatic);
    CHECK(r.params.sampling.grammar == grammar_kind::none);
  }
  SECTION("parallel_tool_calls false: at most one call") {
    auto r =
        ok("{" + user_msg + R"(, "parallel_tool_calls": false, "tools": [)" + time_tool + "]}");
    CHECK(r.max_tool_calls() == 1);
  }
}

TEST_CASE("tool calls: bad tools, choices and tool messages are 400s naming the field",
          "[openai][tools]") {
  struct bad_case {
    std::string body;
    std::string param;
    std::string message;
    chat_format format = chat_format::chatml;
  };
  const std::string m = user_msg;
  const std::vector<bad_case> cases = {
      {"{" + m + R"(, "tools": {}})", "tools", "'tools' must be an array, got object"},
      {"{" + m + R"(, "tools": [1]})", "tools[0]", "'tools[0]' must be an object, got number"},
      {"{" + m + R"(, "tools": [{"type": "retrieval", "function": {"name": "f"}}]})",
       "tools[0].type", "'tools[0].type' must be \"function\""},
      {"{" + m + R"(, "tools": [{"type": "function"}]})", "tools[0].function",
       "'tools[0].function' is required"},
      {"{" + m + R"(, "tools": [{"type": "function", "function": {}}]})", "tools[0].function.name",
       "'tools[0].function.name' is required"},
      {"{" + m + R"(, "tools": [{"type": "function", "function": {"name": "a b"}}]})",
       "tools[0].function.name", "must be 1 to 64 of a-z, A-Z, 0-9, '_' and '-', got \"a b\""},
      {"{" + m +
           R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]})",
       "tools[0].function.parameters", "must be a JSON Schema object, got array"},
      {"{" + m + R"(, "tools": [{"type": "function", "function": {"name": "f", "strict": 1}}]})",
       "tools[0].function.strict", "must be a boolean"},
      {"{" + m + R"(, "tools": [)" + time_tool + "," + time_tool + "]}", "tools[1].function.name",
       "\"get_time\" is also the name of tools[0]"},
      {"{" + m + R"(, "tools": [)" + time_tool + R"(], "tool_choice": "any"})", "tool_choice",
       "'tool_choice' must be \"none\", \"auto\", \"required\" or"},
      {"{" + m + R"(, "tools": [)" + time_tool + R"(], "tool_choice": 1})", "tool_choice",
       "must be a string or an object, got number"},
      {"{" + m + R"(, "tools": [)" + time_tool +
           R"(], "tool_choice": {"function": {"name": "get_time"}}})",
       "tool_choice.type", "'tool_choice.type' must be \"function\""},
      {"{" + m + R"(, "tools": [)" + time_tool + R"(], "tool_choice": {"type": "function"}})",
       "tool_choice.function", "must be an object with a name"},
      {"{" + m + R"(, "tools": [)" + time_tool + "," + weather_tool +
           R"(], "tool_choice": {"type": "function", "function": {"name": "nope"}}})",
       "tool_choice.function.name", "\"nope\" is not in 'tools' (it has: get_time, get_weather)"},
      {"{" + m + R"(, "tool_choice": {"type": "function", "function": {"name": "f"}}})",
       "tool_choice", "names a function but 'tools' lists none"},
      {"{" + m + R"(, "parallel_tool_calls": "yes"})", "parallel_tool_calls", "must be a boolean"},
      {"{" + m + R"(, "tools": [)" + time_tool +
           R"(], "tool_choice": "required", "response_format": {"type": "json_object"}})",
       "tool_choice", "cannot be combined with 'response_format'"},
      {"{" + m + R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters":
           {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}}],
           "tool_choice": "required"})",
       "tools[0].function.parameters", "unsupported keyword 'minimum' at /properties/n"},
      {"{" + m + R"(, "tools": [)" + time_tool + "]}", "tools",
       "tools are not supported with the mistral chat format", chat_format::mistral},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function":
           {"name": "f", "arguments": "{}"}}]}]})",
       "messages[0].tool_calls", "the mistral chat format has no tool-call syntax",
       chat_format::mistral},
      {R"({"messages": [{"role": "user", "content": "x", "tool_calls": []}]})",
       "messages[0].tool_calls", "only allowed on assistant messages"},
      {R"({"messages": [{"role": "assistant", "tool_calls": {}}]})", "messages[0].tool_calls",
       "must be an array, got object"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"type": "function"}]}]})",
       "messages[0].tool_calls[0].function", "is required"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]})",
       "messages[0].tool_calls[0].function.name", "is required"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f",
           "arguments": "{oops"}}]}]})",
       "messages[0].tool_calls[0].function.arguments",
       "must be a JSON object in a string, got text that is not JSON"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f",
           "arguments": {"a": 1}}}]}]})",
       "messages[0].tool_calls[0].function.arguments", "must be a string, got object"},
      {R"({"messages": [{"role": "tool", "content": "42"}]})", "messages[0].tool_call_id",
       "'messages[0].tool_call_id' is required on tool messages"},
  };
  for (const auto& c : cases) {
    INFO(c.body);
    auto e = err(c.body, c.format);
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param == c.param);
    CHECK_THAT(e.message, Catch::Contains(c.message));
  }
}

TEST_CASE("tool calls: response bodies and stream chunks", "[openai][tools]") {
  response_meta meta{endpoint::chat_completions, "chatcmpl-1", 7, "m"};
  generation_summary s;
  s.prompt_tokens = 3;
  s.completion_tokens = 4;
  std::vector<tool_call> calls = {{"call_a", "get_weather", R"({"city":"Paris"})"},
                                  {"call_b", "get_time", "{}"}};
  auto j = json::parse(completion_body(meta, {{0, "", "tool_calls", nullptr, &calls}}, s));
  const auto& msg = j["choices"][0]["message"];
  CHECK(msg["role"] == "assistant");
  CHECK(msg["content"].is_null());
  REQUIRE(msg["tool_calls"].size() == 2);
  CHECK(msg["tool_calls"][0] == json::parse(R"({"id": "call_a", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}})"));
  CHECK(j["choices"][0]["finish_reason"] == "tool_calls");
  // Text beside the calls stays content; no calls: no tool_calls key.
  auto both =
      json::parse(completion_body(meta, {{0, "Checking.", "tool_calls", nullptr, &calls}}, s));
  CHECK(both["choices"][0]["message"]["content"] == "Checking.");
  std::vector<tool_call> none;
  auto plain = json::parse(completion_body(meta, {{0, "Hi", "stop", nullptr, &none}}, s));
  CHECK(plain["choices"][0]["message"]["content"] == "Hi");
  CHECK_FALSE(plain["choices"][0]["message"].contains("tool_calls"));

  auto chunk = json::parse(tool_calls_chunk(meta, 2, {calls[1]}, 1, true));
  CHECK(chunk["object"] == "chat.completion.chunk");
  CHECK(chunk["choices"][0]["index"] == 2);
  CHECK(chunk["choices"][0]["finish_reason"].is_null());
  CHECK(chunk["usage"].is_null());
  const auto& d = chunk["choices"][0]["delta"]["tool_calls"][0];
  CHECK(d["index"] == 1);
  CHECK(d["id"] == "call_b");
  CHECK(d["type"] == "function");
  CHECK(d["function"]["name"] == "get_time");
  CHECK(d["function"]["arguments"] == "{}");
}
