#include <catch2/catch.hpp>

#include "grammar/regex.hpp"

using namespace tokenmill;
using namespace tokenmill::grammar;

namespace {

dfa compile_ok(std::string_view p) {
  auto r = compile_regex(p);
  INFO(p << ": " << (r ? "" : r.error().message));
  REQUIRE(r);
  return *r;
}

std::string compile_err(std::string_view p, const regex_limits& l = {}) {
  auto r = compile_regex(p, l);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::invalid_request);
  return r.error().message;
}

}  // namespace

TEST_CASE("regex: literals and concatenation match the whole text", "[grammar]") {
  auto d = compile_ok("abc");
  CHECK(d.matches("abc"));
  CHECK_FALSE(d.matches("ab"));
  CHECK_FALSE(d.matches("abcd"));
  CHECK_FALSE(d.matches("xabc"));
  CHECK(compile_ok("^abc$").matches("abc"));
}

TEST_CASE("regex: alternation, groups and quantifiers", "[grammar]") {
  auto d = compile_ok("(?:cat|dog)s?");
  CHECK(d.matches("cat"));
  CHECK(d.matches("dogs"));
  CHECK_FALSE(d.matches("cow"));
  auto star = compile_ok("a(bc)*d");
  CHECK(star.matches("ad"));
  CHECK(star.matches("abcbcd"));
  CHECK_FALSE(star.matches("abd"));
  auto plus = compile_ok("x+");
  CHECK_FALSE(plus.matches(""));
  CHECK(plus.matches("xxx"));
  auto counted = compile_ok("a{2,4}");
  CHECK_FALSE(counted.matches("a"));
  CHECK(counted.matches("aa"));
  CHECK(counted.matches("aaaa"));
  CHECK_FALSE(counted.matches("aaaaa"));
  CHECK(compile_ok("b{3}").matches("bbb"));
  CHECK_FALSE(compile_ok("b{3}").matches("bb"));
  auto open = compile_ok("c{2,}");
  CHECK(open.matches("cccccc"));
  CHECK_FALSE(open.matches("c"));
  CHECK(compile_ok("a|").matches(""));
}

TEST_CASE("regex: classes and escapes", "[grammar]") {
  auto d = compile_ok("[a-c_0-9]+");
  CHECK(d.matches("a_9c"));
  CHECK_FALSE(d.matches("d"));
  auto neg = compile_ok("[^\"\\\\]*");
  CHECK(neg.matches("hello world"));
  CHECK(neg.matches("h\xC3\xA9llo"));  // é, two bytes, one character
  CHECK_FALSE(neg.matches("a\"b"));
  CHECK_FALSE(neg.matches("a\\b"));
  CHECK_FALSE(neg.matches("\xC3"));  // a truncated character is not a character
  CHECK(compile_ok("\\d{3}-\\w+\\s\\.").matches("123-ab_1 ."));
  CHECK_FALSE(compile_ok("\\D").matches("5"));
  CHECK(compile_ok("\\x41\\u00e9").matches("A\xC3\xA9"));
  CHECK(compile_ok("[\\]\\-]").matches("-"));
  CHECK(compile_ok("[é]").matches("\xC3\xA9"));
  CHECK(compile_ok("[\\x00-\\x1f]").matches(std::string(1, '\x05')));
  auto dot = compile_ok("a.c");
  CHECK(dot.matches("abc"));
  CHECK(
      dot.matches("a\xE2\x82\xAC"
                  "c"));  // €: one character of three bytes
  CHECK_FALSE(dot.matches("a\nc"));
  CHECK_FALSE(dot.matches("ac"));
}

TEST_CASE("regex: '.' matches only well-formed UTF-8", "[grammar]") {
  auto dot = compile_ok(".");
  for (const char* good : {"\xC2\x80", "\xDF\xBF", "\xE0\xA0\x80", "\xED\x9F\xBF", "\xEE\x80\x80",
                           "\xF0\x90\x80\x80", "\xF4\x8F\xBF\xBF"}) {
    INFO(good);
    CHECK(dot.matches(good));
  }
  // Overlong forms, surrogates, above U+10FFFF, bad lead bytes: a JSON parser refuses them.
  for (const char* bad :
       {"\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xE0\x9F\xBF", "\xED\xA0\x80", "\xF0\x80\x80\x80",
        "\xF0\x8F\xBF\xBF", "\xF4\x90\x80\x80", "\xF5\x80\x80\x80"}) {
    INFO(bad);
    CHECK_FALSE(dot.matches(bad));
    CHECK_FALSE(compile_ok("[^a]").matches(bad));
  }
}

TEST_CASE("regex: dead states are pruned and final states are known", "[grammar]") {
  auto d = compile_ok("ab|ac");
  int32_t s = d.walk(d.start, "a");
  REQUIRE(s >= 0);
  CHECK(d.step(s, 'x') == dfa::dead);
  int32_t end = d.walk(s, "b");
  REQUIRE(end >= 0);
  CHECK(d.accepting[size_t(end)]);
  CHECK(d.final(end));
  auto loop = compile_ok("a+");
  int32_t l = loop.walk(loop.start, "a");
  CHECK(loop.accepting[size_t(l)]);
  CHECK_FALSE(loop.final(l));
}

TEST_CASE("regex: unsupported syntax is refused with what and where", "[grammar]") {
  CHECK(compile_err("ab\\b") == "regex: unsupported escape \\b at offset 3");
  CHECK(compile_err("(a").find("unbalanced '('") != std::string::npos);
  CHECK(compile_err("a)").find("unbalanced ')'") != std::string::npos);
  CHECK(compile_err("a*?").find("lazy") != std::string::npos);
  CHECK(compile_err("(?=a)").find("only (?:") != std::string::npos);
  CHECK(compile_err("*a").find("nothing to repeat") != std::string::npos);
  CHECK(compile_err("[a-").find("unterminated") != std::string::npos);
  CHECK(compile_err("[z-a]").find("end before start") != std::string::npos);
  CHECK(compile_err("a{3,1}").find("max < min") != std::string::npos);
  CHECK(compile_err("\\1").find("unsupported escape \\1") != std::string::npos);
  CHECK(compile_err("a^b").find("'^'") != std::string::npos);
  CHECK(compile_err("[^é]").find("non-ASCII") != std::string::npos);
}

TEST_CASE("regex: limits refuse patterns too big to compile", "[grammar]") {
  CHECK(compile_err("a{5000}").find("above the limit of 1000") != std::string::npos);
  regex_limits small;
  small.max_dfa_states = 10;
  CHECK(compile_err("[ab]*a[ab]{6}", small).find("DFA states") != std::string::npos);
  regex_limits tiny;
  tiny.max_pattern_bytes = 4;
  CHECK(compile_err("abcdef", tiny).find("above the limit") != std::string::npos);
  regex_limits nfa;
  nfa.max_nfa_states = 100;
  CHECK(compile_err("(?:abc){1,1000}", nfa).find("NFA states") != std::string::npos);
}

TEST_CASE("regex: escape makes any text match itself", "[grammar]") {
  const std::string text = "a.b*c(d)[e]{f}|g?h+i^j$k\\l";
  auto d = compile_ok(regex_escape(text));
  CHECK(d.matches(text));
  CHECK_FALSE(d.matches("a.b"));
}
