#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <vector>

#include "engine/tokenizer.hpp"

using namespace tokenmill;

namespace {
std::string detokenize(const tokenizer& tok, const std::vector<token_id>& ids) {
  std::string s;
  for (auto id : ids)
    s += tok.piece(id);
  return s;
}
}  // namespace

TEST_CASE("byte_word_tokenizer encodes bytes as id = byte + 3", "[tokenizer]") {
  byte_word_tokenizer tok(32000);
  CHECK(tok.vocab_size() == 32000);
  CHECK(tok.encode("", false).empty());
  CHECK(tok.encode("", true) == std::vector<token_id>{1});
  CHECK(tok.encode("Hi", false) == std::vector<token_id>{'H' + 3, 'i' + 3});
  CHECK(tok.encode("Hi", true) == std::vector<token_id>{1, 'H' + 3, 'i' + 3});
  // Bytes above 0x7F are not sign-extended.
  CHECK(tok.encode("\xFF\x80", false) == std::vector<token_id>{258, 131});
  // An embedded NUL is a byte like any other.
  CHECK(tok.encode(std::string_view("a\0b", 3), false) == std::vector<token_id>{100, 3, 101});
}

TEST_CASE("every byte round-trips through encode and piece", "[tokenizer]") {
  byte_word_tokenizer tok(300);
  std::string all;
  for (int b = 0; b < 256; ++b)
    all.push_back(static_cast<char>(b));
  auto ids = tok.encode(all, false);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) {
    CHECK(ids[b] == b + 3);
    CHECK(tok.piece(ids[b]) == std::string(1, static_cast<char>(b)));
  }
  CHECK(detokenize(tok, ids) == all);
  std::string text = "héllo, wörld — ✓ 🙂\n\t";
  CHECK(detokenize(tok, tok.encode(text, true)) == text);  // BOS gives ""
}

TEST_CASE("specials and out-of-range ids give empty pieces", "[tokenizer]") {
  byte_word_tokenizer tok(1000);
  CHECK(tok.piece(0).empty());  // <unk>
  CHECK(tok.piece(1).empty());  // <s>
  CHECK(tok.piece(2).empty());  // </s>
  CHECK(tok.piece(-1).empty());
  CHECK(tok.piece(-1000000).empty());
  CHECK(tok.piece(1000).empty());
  CHECK(tok.piece(1001).empty());
  CHECK(tok.piece(2147483647).empty());
  CHECK_FALSE(tok.piece(999).empty());

  byte_word_tokenizer small(100);  // a vocabulary that ends inside the byte range
  CHECK(small.piece(99) == std::string(1, static_cast<char>(96)));
  CHECK(small.piece(100).empty());
  CHECK(small.piece(259).empty());
}

TEST_CASE("word pieces start with a space and are not empty", "[tokenizer]") {
  byte_word_tokenizer tok(5000);
  std::set<std::string> words;
  for (token_id id = 259; id < 5000; ++id) {
    auto w = tok.piece(id);
    REQUIRE(w.size() >= 3);  // " " plus at least one consonant-vowel syllable
    REQUIRE(w[0] == ' ');
    REQUIRE(w.find(' ', 1) == std::string::npos);
    for (size_t i = 1; i < w.size(); ++i)
      REQUIRE(w[i] >= 'a');
    for (size_t i = 1; i < w.size(); ++i)
      REQUIRE(w[i] <= 'z');
    words.insert(w);
  }
  CHECK(tok.piece(259) == tok.piece(259));  // deterministic
  CHECK(words.size() > 1000);               // pieces vary with the id
}

TEST_CASE("utf8_stream passes ASCII through immediately", "[tokenizer]") {
  utf8_stream s;
  CHECK(s.push("hello") == "hello");
  CHECK(s.push(" world") == " world");
  CHECK(s.push("") == "");
  CHECK(s.finish() == "");
}

TEST_CASE("utf8_stream holds back a character split across pushes", "[tokenizer]") {
  const std::string e_acute = "\xC3\xA9";        // é, 2 bytes
  const std::string euro = "\xE2\x82\xAC";       // €, 3 bytes
  const std::string smile = "\xF0\x9F\x99\x82";  // 🙂, 4 bytes

  SECTION("2-byte character") {
    utf8_stream s;
    CHECK(s.push("caf\xC3") == "caf");
    CHECK(s.push("\xA9!") == e_acute + "!");
    CHECK(s.finish() == "");
  }
  SECTION("3-byte character, one byte at a time") {
    utf8_stream s;
    CHECK(s.push("\xE2") == "");
    CHECK(s.push("\x82") == "");
    CHECK(s.push("\xAC") == euro);
    CHECK(s.finish() == "");
  }
  SECTION("4-byte character split 2+2 after text") {
    utf8_stream s;
    CHECK(s.push("ok \xF0\x9F") == "ok ");
    CHECK(s.push("\x99\x82") == smile);
  }
  SECTION("4-byte character split 3+1") {
    utf8_stream s;
    CHECK(s.push("\xF0\x9F\x99") == "");
    CHECK(s.push("\x82 x") == smile + " x");
  }
  SECTION("a complete character followed by the start of the next") {
    utf8_stream s;
    CHECK(s.push(euro + "\xE2\x82") == euro);
    CHECK(s.push("\xAC") == euro);
  }
  SECTION("many characters fed byte by byte reassemble exactly") {
    const std::string text = "a" + e_acute + euro + smile + "z" + smile + e_acute;
    utf8_stream s;
    std::string out;
    for (char c : text)
      out += s.push(std::string(1, c));
    out += s.finish();
    CHECK(out == text);
  }
  SECTION("pieces of the byte tokenizer stream back to the text") {
    byte_word_tokenizer tok(1000);
    const std::string text = "naïve → 🙂 done";
    utf8_stream s;
    std::string out;
    for (auto id : tok.encode(text, true)) {
      auto got = s.push(tok.piece(id));
      out += got;
      CHECK(out == text.substr(0, out.size()));  // never a partial character
    }
    out += s.finish();
    CHECK(out == text);
  }
}

TEST_CASE("utf8_stream finish replaces a dangling tail with U+FFFD once", "[tokenizer]") {
  const std::string replacement = "\xEF\xBF\xBD";
  utf8_stream s;
  CHECK(s.push("ab\xE2\x82") == "ab");
  CHECK(s.finish() == replacement);
  CHECK(s.finish() == "");    // the tail was consumed
  CHECK(s.push("x") == "x");  // the stream is usable again
  CHECK(s.finish() == "");

  utf8_stream lead_only;
  CHECK(lead_only.push("\xF0") == "");
  CHECK(lead_only.finish() == replacement);

  utf8_stream fresh;
  CHECK(fresh.finish() == "");
}

TEST_CASE("utf8_stream never emits malformed UTF-8 and never holds it back", "[tokenizer]") {
  const std::string r = "\xEF\xBF\xBD";  // U+FFFD
  SECTION("stray continuation bytes become U+FFFD each") {
    utf8_stream s;
    CHECK(s.push("a\x80\x80") == "a" + r + r);
    CHECK(s.finish() == "");
  }
  SECTION("an invalid lead byte becomes U+FFFD") {
    utf8_stream s;
    CHECK(s.push("\xFF") == r);
    CHECK(s.push("\xC0\xAF") == r + r);  // an overlong '/' is not a character
    CHECK(s.finish() == "");
  }
  SECTION("an interrupted sequence is replaced when ASCII follows") {
    utf8_stream s;
    CHECK(s.push("\xE2\x82") == "");
    CHECK(s.push("a") == r + r + "a");
    CHECK(s.finish() == "");
  }
  SECTION("surrogates and code points above U+10FFFF are rejected") {
    utf8_stream s;
    CHECK(s.push("\xED\xA0\x80") == r + r + r);
    CHECK(s.push("\xF4\x90\x80\x80") == r + r + r + r);
  }
  SECTION("random bytes always stream out as valid UTF-8") {
    uint64_t x = 88172645463325252ULL;
    for (int round = 0; round < 200; ++round) {
      utf8_stream s;
      std::string out;
      for (int i = 0; i < 50; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out += s.push(std::string(1 + x % 3, static_cast<char>(x >> 24)));
      }
      out += s.finish();
      utf8_stream check;  // valid UTF-8 passes through a second stream unchanged
      CHECK(check.push(out) == out);
    }
  }
}
