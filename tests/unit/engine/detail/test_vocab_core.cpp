// The internals both text tokenizers share (engine/detail/vocab_core.hpp): vocabulary
// validation, literal special tokens split out longest first, byte tokens and UTF-8.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "engine/detail/vocab_core.hpp"

using namespace tokenmill;
using namespace tokenmill::detail;

namespace {

vocab_spec spec_of(std::vector<std::string> tokens, std::vector<token_kind> kinds = {}) {
  vocab_spec s;
  s.tokens = std::move(tokens);
  s.kinds = std::move(kinds);
  return s;
}

}  // namespace

TEST_CASE("vocab_core: init refuses malformed vocabularies with invalid_model", "[tokenizer]") {
  vocab_core empty;
  auto r = empty.init(spec_of({}));
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::invalid_model);
  CHECK(r.error().message == "empty vocabulary");

  vocab_core kinds;
  r = kinds.init(spec_of({"a", "b"}, {token_kind::normal}));
  REQUIRE_FALSE(r);
  CHECK(r.error().message == "token kinds: 1 entries for 2 tokens");

  vocab_core ids;
  auto s = spec_of({"a", "b"});
  s.eos = 2;
  r = ids.init(s);
  REQUIRE_FALSE(r);
  CHECK(r.error().message == "eos token id 2 out of range [0, 2)");
}

TEST_CASE("vocab_core: lookup, pieces and specials", "[tokenizer]") {
  vocab_core c;
  auto s = spec_of({"<s>", "a", "<|end|>", "<|e"}, {token_kind::control, token_kind::normal,
                                                    token_kind::control, token_kind::user_defined});
  s.unk = -1;
  REQUIRE(c.init(s));
  CHECK(c.size() == 4);
  CHECK(c.lookup("a") == 1);
  CHECK(c.lookup("b") == -1);
  // Specials longest first: "<|end|>" is split out before its prefix "<|e".
  REQUIRE(c.specials.size() == 3);
  CHECK(c.specials.front() == 2);
  auto frags = c.split("x<|end|>y<|e");
  REQUIRE(frags.size() == 4);
  CHECK(frags[0].id == -1);
  CHECK(frags[1].id == 2);
  CHECK(frags[2].id == -1);
  CHECK(frags[3].id == 3);
  CHECK(c.split("").empty());
  c.pieces = {"", "a", "", "<|e"};
  CHECK(c.piece(1) == "a");
  CHECK(c.piece(-1).empty());
  CHECK(c.piece(4).empty());
}

TEST_CASE("detail helpers: byte tokens, UTF-8 and the GPT-2 alphabet", "[tokenizer]") {
  CHECK(parse_byte_token("<0x0A>") == 10);
  CHECK(parse_byte_token("<0xff>") == 255);
  CHECK(parse_byte_token("<0xG0>") == -1);
  CHECK(byte_token_text(10) == "<0x0A>");
  std::string s;
  append_utf8(s, 0x2581);
  CHECK(s == space_marker);
  size_t i = 0;
  uint32_t cp = 0;
  REQUIRE(next_utf8(s, i, cp));
  CHECK(cp == 0x2581);
  CHECK(i == 3);
  i = 0;
  CHECK_FALSE(next_utf8("\xC0\x80", i, cp));  // overlong
  CHECK(i == 0);
  const auto& g = gpt2_bytes();
  CHECK(g.utf8['A'] == "A");
  CHECK(g.utf8[' '] == "\xC4\xA0");  // "Ġ"
  CHECK(g.to_byte.at(0x120) == ' ');
  CHECK(canonical_pre("llama-bpe") == "llama3");
  CHECK(canonical_pre("nope").empty());
  CHECK(pattern_of("qwen2") == qwen2_pattern);
}
