#include <catch2/catch.hpp>

#include "grammar/grammar.hpp"
#include "grammar/json_schema.hpp"
#include "grammar/regex.hpp"

using namespace tokenmill;
using namespace tokenmill::grammar;

namespace {

dfa schema_dfa(std::string_view schema) {
  auto r = json_schema_to_regex(schema);
  INFO(schema << ": " << (r ? "" : r.error().message));
  REQUIRE(r);
  auto d = compile_regex(*r);
  INFO(*r << ": " << (d ? "" : d.error().message));
  REQUIRE(d);
  return *d;
}

std::string schema_err(std::string_view schema) {
  auto r = json_schema_to_regex(schema);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::invalid_request);
  return r.error().message;
}

}  // namespace

TEST_CASE("json schema: scalar types", "[grammar]") {
  auto s = schema_dfa(R"({"type":"string"})");
  CHECK(s.matches(R"("hi")"));
  CHECK(s.matches(R"("a \"q\" \\ \n \u00e9")"));
  CHECK(s.matches("\"caf\xC3\xA9\""));
  CHECK_FALSE(s.matches(R"("unterminated)"));
  CHECK_FALSE(s.matches("\"a\nb\""));  // raw control character
  CHECK_FALSE(s.matches(R"("\x")"));
  auto i = schema_dfa(R"({"type":"integer"})");
  CHECK(i.matches("0"));
  CHECK(i.matches("-42"));
  CHECK_FALSE(i.matches("01"));
  CHECK_FALSE(i.matches("1.5"));
  auto n = schema_dfa(R"({"type":"number"})");
  CHECK(n.matches("-1.25e+10"));
  CHECK_FALSE(n.matches("1e545"));  // 2-digit exponents: every number fits a double
  CHECK(n.matches("3"));
  CHECK_FALSE(n.matches("1."));
  CHECK_FALSE(n.matches(".5"));
  auto b = schema_dfa(R"({"type":"boolean"})");
  CHECK(b.matches("true"));
  CHECK_FALSE(b.matches("True"));
  CHECK(schema_dfa(R"({"type":"null"})").matches("null"));
  auto either = schema_dfa(R"({"type":["integer","null"]})");
  CHECK(either.matches("7"));
  CHECK(either.matches("null"));
  CHECK_FALSE(either.matches("\"7\""));
}

TEST_CASE("json schema: strings with length bounds and patterns", "[grammar]") {
  auto s = schema_dfa(R"({"type":"string","minLength":2,"maxLength":3})");
  CHECK_FALSE(s.matches(R"("a")"));
  CHECK(s.matches(R"("ab")"));
  CHECK(s.matches(R"("a\nc")"));  // an escape is one character
  CHECK_FALSE(s.matches(R"("abcd")"));
  auto p = schema_dfa(R"({"type":"string","pattern":"[A-Z]{2}-\\d+"})");
  CHECK(p.matches(R"("AB-12")"));
  CHECK_FALSE(p.matches(R"("ab-12")"));
}

TEST_CASE("json schema: enum, const and anyOf", "[grammar]") {
  auto e = schema_dfa(R"({"enum":["red","green",3,null]})");
  CHECK(e.matches(R"("red")"));
  CHECK(e.matches("3"));
  CHECK(e.matches("null"));
  CHECK_FALSE(e.matches(R"("blue")"));
  auto c = schema_dfa(R"({"const":{"a":[1,2]}})");
  CHECK(c.matches(R"({"a":[1,2]})"));
  CHECK_FALSE(c.matches(R"({"a":[1]})"));
  auto a = schema_dfa(R"({"anyOf":[{"type":"integer"},{"type":"string","maxLength":1}]})");
  CHECK(a.matches("12"));
  CHECK(a.matches(R"("x")"));
  CHECK_FALSE(a.matches(R"("xy")"));
}

TEST_CASE("json schema: objects keep property order, required and optional", "[grammar]") {
  auto o = schema_dfa(R"({"type":"object","properties":{
      "name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array",
      "items":{"type":"string"}}},"required":["age"],"additionalProperties":false})");
  CHECK(o.matches(R"({"name":"x","age":3,"tags":["a","b"]})"));
  CHECK(o.matches(R"({"age":3})"));
  CHECK(o.matches(R"({ "name": "x", "age": 3 })"));
  CHECK(o.matches(R"({"age":3,"tags":[]})"));
  CHECK_FALSE(o.matches(R"({"name":"x"})"));          // age is required
  CHECK_FALSE(o.matches(R"({"age":3,"name":"x"})"));  // declared order
  CHECK_FALSE(o.matches(R"({"age":3,"extra":1})"));   // no additional properties
  CHECK_FALSE(o.matches(R"({"age":3,})"));
  CHECK_FALSE(o.matches("{\"age\":3,  \"tags\":[]}"));  // at most one space
  auto all_optional = schema_dfa(
      R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},
          "c":{"type":"integer"}}})");
  CHECK(all_optional.matches("{}"));
  CHECK(all_optional.matches(R"({"b":1})"));
  CHECK(all_optional.matches(R"({"a":1,"c":2})"));
  CHECK_FALSE(all_optional.matches(R"({,"c":2})"));
  auto nested = schema_dfa(R"({"type":"object","properties":{"p":{"type":"object",
      "properties":{"x":{"type":"number"}},"required":["x"]}},"required":["p"]})");
  CHECK(nested.matches(R"({"p":{"x":1.5}})"));
  CHECK_FALSE(nested.matches(R"({"p":{}})"));
}

TEST_CASE("json schema: arrays with item bounds", "[grammar]") {
  auto a = schema_dfa(R"({"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":3})");
  CHECK_FALSE(a.matches("[]"));
  CHECK(a.matches("[1]"));
  CHECK(a.matches("[1, 2,3]"));
  CHECK_FALSE(a.matches("[1,2,3,4]"));
  CHECK_FALSE(a.matches("[1,]"));
  auto any = schema_dfa(R"({"type":"array"})");
  CHECK(any.matches(R"([1,"a",{"k":[true]},null])"));
  auto none = schema_dfa(R"({"type":"array","maxItems":0})");
  CHECK(none.matches("[]"));
  CHECK_FALSE(none.matches("[1]"));
}

TEST_CASE("json schema: schemaless values and json_object", "[grammar]") {
  auto any = schema_dfa("{}");
  CHECK(any.matches("1"));
  CHECK(any.matches(R"({"a":{"b":[1,2]}})"));
  auto obj = compile_grammar(grammar_kind::json_object, "");
  REQUIRE(obj);
  CHECK((*obj)->matches(R"({"a":1,"b":{"c":[1,{"d":null}]}})") == false);  // 4 levels
  CHECK((*obj)->matches(R"({"a":1,"b":{"c":[1,"x"]}})"));                  // 3 levels
  CHECK((*obj)->matches("{}"));
  CHECK_FALSE((*obj)->matches("[]"));
  CHECK_FALSE((*obj)->matches("1"));
}

TEST_CASE("json schema: unsupported keywords are refused naming keyword and path", "[grammar]") {
  CHECK(schema_err(R"({"type":"object","properties":{"age":{"type":"integer","minimum":0}}})") ==
        "unsupported keyword 'minimum' at /properties/age");
  CHECK(schema_err(R"({"type":"string","format":"date-time"})") ==
        "unsupported keyword 'format' at /");
  CHECK(schema_err(R"({"oneOf":[{"type":"string"}]})") == "unsupported keyword 'oneOf' at /");
  CHECK(schema_err(R"({"type":"array","items":{"$ref":"#/$defs/x"}})") ==
        "unsupported keyword '$ref' at /items");
  CHECK(schema_err(R"({"type":"object","properties":{},"additionalProperties":true})")
            .find("'additionalProperties' at / must be false") != std::string::npos);
  CHECK(schema_err(R"({"type":"widget"})") == "unknown type 'widget' at /");
  CHECK(
      schema_err(R"({"type":"object","properties":{"a":{}},"required":["b"]})").find("names 'b'") !=
      std::string::npos);
  CHECK(schema_err(R"({"type":"string","maxLength":5000})").find("maximum of 1000") !=
        std::string::npos);
  CHECK(schema_err(R"({"type":"string","pattern":"a\\b"})")
            .find("'pattern' at /: regex: unsupported escape") != std::string::npos);
  CHECK(schema_err("[1]") == "schema at / must be an object or a boolean");
  CHECK(schema_err("{").find("not valid JSON") != std::string::npos);
  CHECK(schema_err("false").find("matches nothing") != std::string::npos);
}

TEST_CASE("grammar kinds round-trip through their names", "[grammar]") {
  for (auto k : {grammar_kind::none, grammar_kind::regex, grammar_kind::json_schema,
                 grammar_kind::json_object})
    CHECK(grammar_kind_from_string(to_string(k)) == k);
  CHECK_FALSE(grammar_kind_from_string("ebnf"));
  auto big = compile_grammar(grammar_kind::regex, std::string(k_max_source_bytes + 1, 'a'));
  REQUIRE_FALSE(big);
  CHECK(big.error().message.find("above the limit") != std::string::npos);
}
