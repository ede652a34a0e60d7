// Structured output end to end on a random-weight model (`tokenmill make-model`): only the
// grammar mask can make its output valid JSON, so a parse that succeeds is the mask at
// work. HTTP (response_format, the tokenmill.regex extension), the command line
// (--json-schema, --regex, --json-object), aggregated and disaggregated (the prefill
// worker samples the first token under the grammar), and the 400s for bad grammars.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "cli_json.hpp"
#include "frontend/http_client.hpp"
#include "harness.hpp"
#include "tests/skip.hpp"

using namespace tokenmill;
using namespace tokenmill::testing;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

/// Bodies are ordered_json where the schema's key order matters (nlohmann::json sorts).
template <class J>
json post(const server& s, const std::string& target, const J& body, int want_status = 200) {
  auto c = http_client::connect("127.0.0.1", s.http_port(), 5);
  REQUIRE(c.ok());
  auto r = (*c)->request("POST", target, body.dump(), "application/json", {}, 60);
  INFO((r ? r->body : r.error().message));
  REQUIRE(r.ok());
  CHECK(r->status == want_status);
  auto j = json::parse(r->body, nullptr, false);
  REQUIRE(j.is_object());
  return j;
}

// Every property required, every string and array bounded: a random model reaches the end.
const nlohmann::ordered_json person_schema = nlohmann::ordered_json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 6},
    "age": {"type": "integer"},
    "score": {"type": "number"},
    "member": {"type": "boolean"},
    "color": {"enum": ["red", "green", "blue"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]}
  },
  "required": ["name", "age", "score", "member", "color", "tags", "note"],
  "additionalProperties": false
})");

void check_person(const std::string& text) {
  INFO("output: " << text);
  auto j = json::parse(text, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j.size() == 7);
  REQUIRE(j["name"].is_string());
  CHECK(j["name"].get<std::string>().size() >= 1);
  CHECK(j["age"].is_number_integer());
  CHECK(j["score"].is_number());
  CHECK(j["member"].is_boolean());
  CHECK((j["color"] == "red" || j["color"] == "green" || j["color"] == "blue"));
  REQUIRE(j["tags"].is_array());
  CHECK(j["tags"].size() <= 2);
  for (const auto& t : j["tags"])
    CHECK(t.is_string());
  CHECK((j["note"].is_null() || j["note"].is_string()));
  // Declared order.
  CHECK(text.find("\"name\"") < text.find("\"age\""));
  CHECK(text.find("\"tags\"") < text.find("\"note\""));
}

json chat_with_schema(const server& s, uint64_t seed) {
  nlohmann::ordered_json body = {
      {"messages", {{{"role", "user"}, {"content", "Describe a person as JSON."}}}},
      {"max_tokens", 400},
      {"temperature", 1.0},
      {"seed", seed},
      {"response_format",
       {{"type", "json_schema"},
        {"json_schema", {{"name", "person"}, {"strict", true}, {"schema", person_schema}}}}}};
  return post(s, "/v1/chat/completions", body);
}

}  // namespace

TEST_CASE("structured: json_schema output of a random model parses and fits the schema",
          "[integration][structured][model]") {
  server agg(cpu_server(tiny_random_model(), 0));
  std::vector<std::string> texts;
  for (uint64_t seed : {1, 2, 3}) {
    auto r = chat_with_schema(agg, seed);
    INFO(r.dump());
    CHECK(r["choices"][0]["finish_reason"] == "stop");
    auto text = r["choices"][0]["message"]["content"].get<std::string>();
    check_person(text);
    texts.push_back(text);
  }
  // The same seeds disaggregated: the prefill worker samples the first token under the
  // grammar, the decode worker rebuilds the state from it; the output is the same.
  server disagg(cpu_server(tiny_random_model(), 1));
  for (size_t i = 0; i < texts.size(); ++i) {
    auto r = chat_with_schema(disagg, i + 1);
    CHECK(r["choices"][0]["message"]["content"] == texts[i]);
  }
}

TEST_CASE("structured: json_object, the regex extension and streaming",
          "[integration][structured][model]") {
  server srv(cpu_server(tiny_random_model(), 0));
  // A regular expression on a completion: the whole text matches it.
  json body = {{"prompt", "The code is"},
               {"max_tokens", 40},
               {"temperature", 1.0},
               {"seed", 7},
               {"tokenmill", {{"regex", "[A-Z]{2}-[0-9]{3}( (ok|fail))?"}}}};
  auto r = post(srv, "/v1/completions", body);
  auto text = r["choices"][0]["text"].get<std::string>();
  INFO(text);
  CHECK(std::regex_match(text, std::regex("[A-Z]{2}-[0-9]{3}( (ok|fail))?")));
  CHECK(r["choices"][0]["finish_reason"] == "stop");
  // json_object: an object (the nesting and the strings are not bounded, so a random model
  // may run out of tokens; what it wrote is still the start of an object).
  json obj = {{"messages", {{{"role", "user"}, {"content", "JSON please"}}}},
              {"max_tokens", 64},
              {"seed", 3},
              {"temperature", 1.0},
              {"response_format", {{"type", "json_object"}}}};
  auto o = post(srv, "/v1/chat/completions", obj);
  auto otext = o["choices"][0]["message"]["content"].get<std::string>();
  INFO(otext);
  REQUIRE_FALSE(otext.empty());
  CHECK(otext[0] == '{');
  if (o["choices"][0]["finish_reason"] == "stop") CHECK(json::parse(otext).is_object());
  // Streamed: the same text as the whole response.
  auto c = http_client::connect("127.0.0.1", srv.http_port(), 5);
  REQUIRE(c.ok());
  body["stream"] = true;
  std::string streamed;
  auto s = (*c)->post_sse(
      "/v1/completions", body.dump(),
      [&](std::string_view data, int64_t) {
        if (data == "[DONE]") return;
        auto j = json::parse(data);
        streamed += j["choices"][0]["text"].get<std::string>();
      },
      60);
  REQUIRE(s.ok());
  CHECK(streamed == text);
}

TEST_CASE("structured: generate --json-schema, --regex and --json-object",
          "[integration][structured][model]") {
  server srv(cpu_server(tiny_random_model(), 0));
  temp_dir dir;
  {
    std::ofstream f(dir.file("person.json"));
    f << person_schema.dump(2);
  }
  auto r = srv.generate({"--quiet", "--max-tokens", "400", "--temperature", "1", "--seed", "5",
                         "--json-schema", dir.file("person.json"), "A person:"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  check_person(r.out.substr(0, r.out.find_last_not_of('\n') + 1));
  auto re = srv.generate(
      {"--quiet", "--max-tokens", "20", "--temperature", "1", "--regex", "(yes|no)!", "Answer:"});
  INFO(re.out << re.err);
  REQUIRE(re.exit_code == 0);
  CHECK((re.out == "yes!\n" || re.out == "no!\n"));
  auto obj = srv.generate({"--quiet", "--max-tokens", "8", "--json-object", "x"});
  REQUIRE(obj.exit_code == 0);
  CHECK(obj.out.rfind("{", 0) == 0);
  // A bad grammar is refused before anything runs, naming what is wrong.
  auto bad = srv.generate({"--regex", "(unclosed", "x"});
  CHECK(bad.exit_code != 0);
  CHECK(bad.err.find("unbalanced '('") != std::string::npos);
  {
    std::ofstream f(dir.file("bad.json"));
    f << R"({"type": "integer", "minimum": 3})";
  }
  auto bad_schema = srv.generate({"--json-schema", dir.file("bad.json"), "x"});
  CHECK(bad_schema.exit_code != 0);
  CHECK(bad_schema.err.find("unsupported keyword 'minimum' at /") != std::string::npos);
  auto missing = srv.generate({"--json-schema", dir.file("none.json"), "x"});
  CHECK(missing.exit_code != 0);
  CHECK(missing.err.find("cannot read") != std::string::npos);
}

TEST_CASE("structured: bad grammars are 400s naming the field, before anything is queued",
          "[integration][structured]") {
  server srv;  // sim engine
  const json msgs = {{{"role", "user"}, {"content", "hi"}}};
  auto expect = [&](const json& extra, const std::string& param, const std::string& mention) {
    json body = {{"messages", msgs}, {"max_tokens", 4}};
    body.update(extra);
    auto j = post(srv, "/v1/chat/completions", body, 400);
    INFO(j.dump());
    auto msg = j["error"]["message"].get<std::string>();
    CHECK(msg.find(mention) != std::string::npos);
    if (!param.empty()) CHECK(j["error"]["param"] == param);
  };
  expect({{"response_format", {{"type", "yaml"}}}}, "response_format.type", "got \"yaml\"");
  expect({{"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}}}}}},
         "response_format.json_schema.schema", "is required");
  expect(
      {{"response_format",
        {{"type", "json_schema"},
         {"json_schema", {{"name", "x"}, {"schema", {{"type", "string"}, {"format", "email"}}}}}}}},
      "", "response_format.json_schema.schema: unsupported keyword 'format' at /");
  expect({{"response_format",
           {{"type", "json_schema"},
            {"json_schema",
             {{"name", "x"},
              {"schema",
               {{"type", "object"},
                {"properties", {{"a", {{"type", "array"}, {"items", {{"$ref", "#/x"}}}}}}}}}}}}}},
         "", "unsupported keyword '$ref' at /properties/a/items");
  expect({{"tokenmill", {{"regex", "a(b"}}}}, "", "tokenmill.regex: regex: unbalanced '('");
  expect({{"tokenmill", {{"regex", 12}}}}, "tokenmill.regex", "must be a string");
  expect({{"tokenmill", {{"regex", std::string(70000, 'a')}}}}, "",
         "tokenmill.regex: grammar of 70000 bytes is above the limit");
  expect({{"tokenmill", {{"regex", "[ab]*a[ab]{20}"}}}}, "",
         "tokenmill.regex: regex: too large (more than 50000 DFA states)");
  // Nothing was queued for any of them.
  auto st = srv.status();
  REQUIRE(st.is_object());
  CHECK(workers_idle(st));
}

TEST_CASE("structured: the sim engine follows the grammar too", "[integration][structured]") {
  server srv;  // sim engine: its pick moves to the first allowed token
  auto r = srv.generate({"--quiet", "--max-tokens", "30", "--regex", "[a-c]{3}x", "go"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(std::regex_match(r.out, std::regex("[a-c]{3}x\n")));
}

TEST_CASE("structured: the official openai npm client", "[integration][structured][npm]") {
  // The package test_http.cpp installs into the build tree; no node or no package: skip.
  const std::filesystem::path dir = TOKENMILL_NPM_DIR;
  const std::string script =
      std::string(TOKENMILL_SOURCE_DIR) + "/tests/integration/openai_structured.mjs";
  if (std::system("node --version >/dev/null 2>&1") != 0 ||
      std::system("npm --version >/dev/null 2>&1") != 0)
    TM_SKIP("node or npm is not installed");
  if (!std::filesystem::exists(dir / "node_modules/openai/package.json")) {
    std::filesystem::create_directories(dir);
    auto cmd = "cd '" + dir.string() +
               "' && timeout 180 npm install --no-audit --no-fund --silent openai@4 "
               ">npm-install.log 2>&1";
    if (std::system(cmd.c_str()) != 0)
      TM_SKIP("`npm install openai@4` failed (no registry access?); see "
              << (dir / "npm-install.log").string());
  }
  server srv;  // sim engine: its pick moves to the first token the grammar allows
  auto out = std::filesystem::temp_directory_path() /
             ("tokenmill-npm-structured-" + std::to_string(::getpid()) + ".json");
  auto cmd = "cd '" + dir.string() + "' && timeout 60 node '" + script +
             "' http://127.0.0.1:" + std::to_string(srv.http_port()) + "/v1 > '" + out.string() +
             "' 2>&1";
  int rc = std::system(cmd.c_str());
  std::ifstream f(out);
  std::string body((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::filesystem::remove(out);
  INFO(body);
  REQUIRE(rc == 0);
  auto j = json::parse(body.substr(body.find('{')));
  CHECK(j["json_schema"]["finish_reason"] == "stop");
  const auto& w = j["json_schema"]["parsed"];
  REQUIRE(w.is_object());
  CHECK(w["city"].is_string());
  CHECK(w["rainy"].is_boolean());
  CHECK(w["temp"].is_number_integer());
  CHECK((w["unit"] == "C" || w["unit"] == "F"));
  CHECK(j["stream"]["content"] == j["json_schema"]["content"]);
  CHECK(std::regex_match(j["regex"]["text"].get<std::string>(), std::regex("(yes|no)[.!]")));
  CHECK(j["regex"]["finish_reason"] == "stop");
  CHECK(j["refused"]["status"] == 400);
  CHECK_THAT(j["refused"]["message"].get<std::string>(),
             Catch::Contains("unsupported keyword 'minimum' at /"));
}

namespace {

// Tool calls: the weather function's arguments are bounded, so a random model ends them.
const nlohmann::ordered_json weather_tool = nlohmann::ordered_json::parse(R"({
  "type": "function",
  "function": {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
      "type": "object",
      "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 6},
        "days": {"type": "integer"},
        "unit": {"enum": ["C", "F"]}
      },
      "required": ["city", "days", "unit"],
      "additionalProperties": false
    }
  }
})");
const nlohmann::ordered_json time_tool = nlohmann::ordered_json::parse(R"({
  "type": "function",
  "function": {"name": "get_time", "parameters": {"type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 3}}, "required": ["zone"],
    "additionalProperties": false}}
})");

/// The one call of a tool_calls response; its arguments parsed.
json only_call(const json& r) {
  INFO(r.dump());
  const auto& choice = r["choices"][0];
  CHECK(choice["finish_reason"] == "tool_calls");
  const auto& calls = choice["message"]["tool_calls"];
  REQUIRE(calls.is_array());
  REQUIRE(calls.size() == 1);
  const auto& c = calls[0];
  CHECK(c["type"] == "function");
  CHECK(c["id"].get<std::string>().rfind("call_", 0) == 0);
  auto args = json::parse(c["function"]["arguments"].get<std::string>(), nullptr, false);
  REQUIRE(args.is_object());
  return {{"name", c["function"]["name"]}, {"args", args}};
}

void check_weather_args(const json& a) {
  INFO(a.dump());
  CHECK(a.size() == 3);
  REQUIRE(a["city"].is_string());
  CHECK(!a["city"].get<std::string>().empty());
  const auto city = a["city"].get<std::string>();
  CHECK(std::count_if(city.begin(), city.end(), [](char c) { return (c & 0xC0) != 0x80; }) <= 6);
  CHECK(city.find("\xEF\xBF\xBD") == std::string::npos);  // no U+FFFD: the bytes were UTF-8
  CHECK(a["days"].is_number_integer());
  CHECK((a["unit"] == "C" || a["unit"] == "F"));
}

}  // namespace

TEST_CASE("structured: tool_choice named and required constrain a random model's call",
          "[integration][structured][model][tools]") {
  server srv(cpu_server(tiny_random_model(), 0));
  nlohmann::ordered_json body = {
      {"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}},
      {"max_tokens", 200},
      {"temperature", 1.0},
      {"tools", {weather_tool, time_tool}},
      {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}};
  std::vector<std::string> args;
  for (uint64_t seed : {1, 2}) {
    body["seed"] = seed;
    auto r = post(srv, "/v1/chat/completions", body);
    CHECK(r["choices"][0]["message"]["content"].is_null());
    auto c = only_call(r);
    CHECK(c["name"] == "get_weather");
    check_weather_args(c["args"]);
    args.push_back(c["args"].dump());
  }
  // Streamed with the same seed: one delta carries the whole call, then "tool_calls".
  body["seed"] = 1;
  body["stream"] = true;
  auto cl = http_client::connect("127.0.0.1", srv.http_port(), 5);
  REQUIRE(cl.ok());
  auto sr = (*cl)->request("POST", "/v1/chat/completions", body.dump(), "application/json", {}, 60);
  REQUIRE(sr.ok());
  INFO(sr->body);
  std::string streamed_args;
  std::string finish;
  size_t pos = 0;
  while ((pos = sr->body.find("data: {", pos)) != std::string::npos) {
    auto end = sr->body.find("\n\n", pos);
    auto chunk = json::parse(sr->body.substr(pos + 6, end - pos - 6));
    pos = end;
    if (chunk["choices"].empty()) continue;
    const auto& ch = chunk["choices"][0];
    if (ch["delta"].contains("tool_calls")) {
      CHECK(ch["delta"]["tool_calls"][0]["index"] == 0);
      CHECK(ch["delta"]["tool_calls"][0]["function"]["name"] == "get_weather");
      streamed_args += ch["delta"]["tool_calls"][0]["function"]["arguments"].get<std::string>();
    }
    if (ch["delta"].contains("content")) CHECK(ch["delta"]["content"] == "");
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  CHECK(finish == "tool_calls");
  CHECK(json::parse(streamed_args).dump() == args[0]);
  // required: one call of either function.
  body.erase("stream");
  body["tool_choice"] = "required";
  auto r = post(srv, "/v1/chat/completions", body);
  auto c = only_call(r);
  if (c["name"] == "get_weather") {
    check_weather_args(c["args"]);
  } else {
    CHECK(c["name"] == "get_time");
    CHECK(c["args"]["zone"].is_string());
  }
}

TEST_CASE("structured: tool calls through the official openai npm client",
          "[integration][structured][npm][tools]") {
  const std::filesystem::path dir = TOKENMILL_NPM_DIR;
  const std::string script =
      std::string(TOKENMILL_SOURCE_DIR) + "/tests/integration/openai_tools.mjs";
  if (std::system("node --version >/dev/null 2>&1") != 0 ||
      std::system("npm --version >/dev/null 2>&1") != 0)
    TM_SKIP("node or npm is not installed");
  if (!std::filesystem::exists(dir / "node_modules/openai/package.json")) {
    std::filesystem::create_directories(dir);
    auto cmd = "cd '" + dir.string() +
               "' && timeout 180 npm install --no-audit --no-fund --silent openai@4 "
               ">npm-install.log 2>&1";
    if (std::system(cmd.c_str()) != 0)
      TM_SKIP("`npm install openai@4` failed (no registry access?); see "
              << (dir / "npm-install.log").string());
  }
  server srv;  // sim engine: its pick moves to the first token the grammar allows
  auto out = std::filesystem::temp_directory_path() /
             ("tokenmill-npm-tools-" + std::to_string(::getpid()) + ".json");
  auto cmd = "cd '" + dir.string() + "' && timeout 60 node '" + script +
             "' http://127.0.0.1:" + std::to_string(srv.http_port()) + "/v1 > '" + out.string() +
             "' 2>&1";
  int rc = std::system(cmd.c_str());
  std::ifstream f(out);
  std::string body((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::filesystem::remove(out);
  INFO(body);
  REQUIRE(rc == 0);
  auto j = json::parse(body.substr(body.find('{')));
  CHECK(j["named"]["finish_reason"] == "tool_calls");
  CHECK(j["named"]["content"].is_null());
  REQUIRE(j["named"]["calls"].size() == 1);
  const auto& call = j["named"]["calls"][0];
  CHECK(call["type"] == "function");
  CHECK(call["name"] == "get_weather");
  const auto& a = call["args"];
  CHECK(a["city"].is_string());
  CHECK(a["days"].is_number_integer());
  CHECK((a["unit"] == "C" || a["unit"] == "F"));
  CHECK(j["required"]["finish_reason"] == "tool_calls");
  REQUIRE(j["required"]["calls"].size() == 1);
  CHECK((j["required"]["calls"][0]["name"] == "get_weather" ||
         j["required"]["calls"][0]["name"] == "get_time"));
  CHECK(j["stream"]["finish_reason"] == "tool_calls");
  REQUIRE(j["stream"]["calls"].size() == 1);
  CHECK(j["stream"]["calls"][0]["name"] == "get_weather");
  CHECK(j["stream"]["calls"][0]["args"] == a);
  CHECK(j["stream"]["content"] == "");
  CHECK(j["follow_up"]["content_type"] == "string");
  CHECK(j["follow_up"]["completion_tokens"].get<int>() >= 1);
  CHECK(j["unknown_name"]["status"] == 400);
  CHECK(j["unknown_name"]["param"] == "tool_choice.function.name");
  CHECK(j["bad_schema"]["status"] == 400);
  CHECK(j["bad_schema"]["param"] == "tools[0].function.parameters");
  CHECK_THAT(j["bad_schema"]["message"].get<std::string>(),
             Catch::Contains("unsupported keyword 'minimum' at /properties/n"));
}

TEST_CASE("structured: tool calls in the llama3 format, and auto leaves plain text as content",
          "[integration][structured][model][tools]") {
  auto opts = cpu_server(tiny_random_model(), 0);
  opts["--chat-template"] = "llama3";
  server srv(opts);
  nlohmann::ordered_json body = {
      {"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}},
      {"max_tokens", 200},
      {"temperature", 1.0},
      {"seed", 3},
      {"tools", {weather_tool, time_tool}},
      {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}};
  auto c = only_call(post(srv, "/v1/chat/completions", body));
  CHECK(c["name"] == "get_weather");
  check_weather_args(c["args"]);
  // The call goes back with its result (an "ipython" turn) and the model answers.
  auto first = post(srv, "/v1/chat/completions", body);
  const auto& call = first["choices"][0]["message"]["tool_calls"][0];
  body["messages"].push_back(nlohmann::ordered_json::parse(first["choices"][0]["message"].dump()));
  nlohmann::ordered_json result = {{"role", "tool"},
                                   {"tool_call_id", call["id"].get<std::string>()},
                                   {"content", "{\"temp\": 21}"}};
  body["messages"].push_back(std::move(result));
  // auto on a random model: its text is not a call (it does not start with '{'), so it
  // comes back as content and the finish reason is the plain one.
  body["tool_choice"] = "auto";
  body["max_tokens"] = 8;
  auto r = post(srv, "/v1/chat/completions", body);
  INFO(r.dump());
  const auto& choice = r["choices"][0];
  CHECK(choice["message"]["content"].is_string());
  CHECK_FALSE(choice["message"].contains("tool_calls"));
  CHECK((choice["finish_reason"] == "length" || choice["finish_reason"] == "stop"));
}
