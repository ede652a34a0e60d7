#include <catch2/catch.hpp>

#include <random>

#include "grammar/grammar.hpp"
#include "grammar/token_automaton.hpp"

using namespace tokenmill;
using namespace tokenmill::grammar;

namespace {

// ids: 0 <s> (special), 1 </s> (EOS), then pieces.
std::shared_ptr<const vocabulary> small_vocab() {
  return std::make_shared<const vocabulary>(
      std::vector<std::string>{"", "", "a", "b", "ab", "abc", "c", "{", "}", "\"", "\":", "1", "12",
                               "x", "ab"},
      token_id{1});
}

std::shared_ptr<const token_automaton> automaton(std::string_view pattern,
                                                 std::shared_ptr<const vocabulary> v) {
  auto d = compile_regex(pattern);
  REQUIRE(d);
  return std::make_shared<const token_automaton>(std::make_shared<const dfa>(std::move(*d)), v);
}

std::vector<token_id> allowed_ids(const token_automaton& a, int32_t state) {
  std::vector<token_id> out;
  auto m = a.allowed(state);
  for (size_t i = 0; i < a.vocab().size(); ++i)
    if (mask_allows(m, token_id(i))) out.push_back(token_id(i));
  return out;
}

}  // namespace

TEST_CASE("token automaton: a token is allowed when all its bytes fit", "[grammar]") {
  auto v = small_vocab();
  auto a = automaton("ab?c", v);
  // From the start: "a", "ab", "abc" and the duplicate "ab" (id 14) fit; nothing else.
  CHECK(allowed_ids(*a, a->start()) == std::vector<token_id>{2, 4, 5, 14});
  int32_t s = a->advance(a->start(), 4);  // "ab"
  REQUIRE(s >= 0);
  CHECK(allowed_ids(*a, s) == std::vector<token_id>{6});  // only "c"; not EOS yet
  int32_t end = a->advance(s, 6);
  REQUIRE(end >= 0);
  CHECK(a->accepting(end));
  CHECK(a->finished(end));
  CHECK(allowed_ids(*a, end) == std::vector<token_id>{1});  // only EOS
  CHECK(a->advance(end, 1) == end);
  CHECK(a->advance(a->start(), 1) == dfa::dead);  // EOS before the text is complete
  CHECK(a->advance(a->start(), 3) == dfa::dead);  // "b" cannot start it
  CHECK(a->advance(a->start(), 0) == dfa::dead);  // specials never fit
  CHECK(a->advance(a->start(), 99) == dfa::dead);
}

TEST_CASE("token automaton: EOS is allowed with more text possible in accepting states",
          "[grammar]") {
  auto a = automaton("1+", small_vocab());
  int32_t s = a->advance(a->start(), 12);  // "12"? no: only 1s
  CHECK(s == dfa::dead);
  s = a->advance(a->start(), 11);
  REQUIRE(s >= 0);
  CHECK(allowed_ids(*a, s) == std::vector<token_id>{1, 11});
  CHECK_FALSE(a->finished(s));
}

TEST_CASE("token automaton: masks are computed once per state and cached", "[grammar]") {
  auto a = automaton("(?:ab|c)*", small_vocab());
  CHECK(a->cached_states() == 0);
  auto m1 = a->allowed(a->start());
  auto m2 = a->allowed(a->start());
  CHECK(m1.data() == m2.data());
  CHECK(a->cached_states() == 1);
}

TEST_CASE("token automaton: replay rebuilds the state from generated tokens", "[grammar]") {
  auto a = automaton(R"(\{"x\":1+\})", small_vocab());
  std::vector<token_id> gen{7, 9, 13, 10, 11, 11};  // {  "  x  ":  1  1
  int32_t s = a->start();
  for (auto t : gen)
    s = a->advance(s, t);
  REQUIRE(s >= 0);
  CHECK(a->replay(gen) == s);
  CHECK(a->replay(std::vector<token_id>{8}) == dfa::dead);
}

TEST_CASE("token automaton: masks agree with walking every token's bytes", "[grammar]") {
  // A vocabulary of random byte strings over a small alphabet, and a JSON-ish grammar.
  std::mt19937 rng(7);
  std::vector<std::string> pieces{"", ""};
  const std::string alpha = "{}[]\":,ab1 ";
  for (int i = 0; i < 400; ++i) {
    std::string p;
    size_t len = 1 + rng() % 4;
    for (size_t k = 0; k < len; ++k)
      p += alpha[rng() % alpha.size()];
    pieces.push_back(p);
  }
  auto v = std::make_shared<const vocabulary>(pieces, token_id{1});
  auto d = compile_grammar(grammar_kind::json_schema,
                           R"({"type":"object","properties":{"a":{"type":"array",
                               "items":{"type":"integer"}}},"required":["a"]})");
  REQUIRE(d);
  token_automaton a(*d, v);
  // Random walks: at each state the mask must equal the brute-force answer.
  for (int walk = 0; walk < 20; ++walk) {
    int32_t s = a.start();
    for (int step = 0; step < 30; ++step) {
      auto m = a.allowed(s);
      std::vector<token_id> ok;
      for (size_t i = 0; i < pieces.size(); ++i) {
        bool brute = !pieces[i].empty() && (*d)->walk(s, pieces[i]) != dfa::dead;
        if (i == 1) brute = a.accepting(s);
        CHECK(mask_allows(m, token_id(i)) == brute);
        if (brute && i != 1) ok.push_back(token_id(i));
      }
      if (ok.empty()) break;
      s = a.advance(s, ok[rng() % ok.size()]);
      REQUIRE(s >= 0);
    }
  }
}

TEST_CASE("grammar cache: compiles once per source, refuses bad grammars", "[grammar]") {
  grammar_cache cache(small_vocab(), 2);
  auto a1 = cache.get(grammar_kind::regex, "ab");
  auto a2 = cache.get(grammar_kind::regex, "ab");
  REQUIRE(a1);
  REQUIRE(a2);
  CHECK(a1->get() == a2->get());
  CHECK(cache.compiled() == 1);
  auto none = cache.get(grammar_kind::none, "");
  REQUIRE(none);
  CHECK(*none == nullptr);
  auto bad = cache.get(grammar_kind::regex, "(");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message.find("unbalanced") != std::string::npos);
  REQUIRE(cache.get(grammar_kind::regex, "c"));
  REQUIRE(cache.get(grammar_kind::json_object, ""));  // evicts "ab" (capacity 2)
  REQUIRE(cache.get(grammar_kind::regex, "ab"));
  CHECK(cache.compiled() == 4);
}

TEST_CASE("grammar state: catches up over the output only, and rebuilds after a move",
          "[grammar]") {
  auto a = automaton("ab?c", small_vocab());
  // prompt: "x" "x" (not constrained), then output "ab" "c".
  std::vector<token_id> seq{13, 13, 4, 6};
  grammar_state here;
  here.start(a, 2);
  REQUIRE(here.catch_up(std::span(seq).first(3)));
  CHECK_FALSE(here.finished());
  REQUIRE(here.catch_up(seq));
  CHECK(here.finished());
  // A worker that takes the sequence over starts from the prompt length and replays.
  grammar_state there;
  there.start(a, 2);
  REQUIRE(there.catch_up(seq));
  CHECK(there.state() == here.state());
  // A recompute migration folds the output into the prompt: the start index says where it
  // begins.
  grammar_state folded;
  folded.start(a, 3);
  std::vector<token_id> bad{13, 13, 4, 6};  // starts at "c": does not fit
  auto r = folded.catch_up(bad);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("token 6 at position 3") != std::string::npos);
}
