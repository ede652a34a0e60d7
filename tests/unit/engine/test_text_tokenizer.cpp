// The SentencePiece-style and byte-level BPE tokenizers (engine/detail/{spm,bpe}_tokenizer.cpp),
// vocabulary validation and streaming detokenization.
#include <catch2/catch.hpp>

#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "engine/text_tokenizer.hpp"
#include "tokenizer_specs.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

// ---------------------------------------------------------------------------------------
// SentencePiece-style

TEST_CASE("spm merges the highest-scoring pair first", "[tokenizer]") {
  auto spec = spm_spec({{sp, -10},
                        {"a", -10},
                        {"b", -10},
                        {"c", -10},
                        {"ab", -2},
                        {"bc", -1},
                        {sp + "a", -3},
                        {sp + "ab", -0.5f}});
  auto tok = make(spec);
  // "▁abc": bc (-1) beats ab (-2) and ▁a (-3); then ▁a; "▁abc" is no token.
  CHECK(tok->encode("abc", false) == ids{id_of(spec, sp + "a"), id_of(spec, "bc")});
  // Raise ab above bc: ab, then ▁ab (-0.5), leaving c.
  spec.scores[id_of(spec, "ab")] = -0.1f;
  auto tok2 = make(spec);
  CHECK(tok2->encode("abc", false) == ids{id_of(spec, sp + "ab"), id_of(spec, "c")});
}

TEST_CASE("spm breaks score ties leftmost first", "[tokenizer]") {
  auto spec = spm_spec({{"x", -5}, {"y", -5}, {"xy", -1}, {"yx", -1}});
  spec.add_space_prefix = false;
  auto tok = make(spec);
  CHECK(tok->encode("xyx", false) == ids{id_of(spec, "xy"), id_of(spec, "x")});
  CHECK(tok->encode("yxy", false) == ids{id_of(spec, "yx"), id_of(spec, "y")});
}

TEST_CASE("spm adds the space prefix and turns spaces into U+2581", "[tokenizer]") {
  auto spec = spm_spec({{sp, -1}, {"a", -1}, {sp + "a", -0.5f}});
  auto tok = make(spec);
  const token_id s = id_of(spec, sp), a = id_of(spec, "a"), sa = id_of(spec, sp + "a");
  CHECK(tok->encode("a a", false) == ids{sa, sa});
  CHECK(tok->encode(" a", false) == ids{s, sa});
  CHECK(tok->encode("a ", false) == ids{sa, s});
  CHECK(tok->piece(sa) == " a");
  CHECK(tok->piece(s) == " ");
  spec.add_space_prefix = false;
  auto raw = make(spec);
  CHECK(raw->encode("a a", false) == ids{a, sa});
}

TEST_CASE("spm falls back to byte tokens, and to <unk> without them", "[tokenizer]") {
  auto spec = spm_spec({{sp, -1}, {"a", -1}});
  auto tok = make(spec);
  // é = C3 A9 is not a piece: its bytes are, at id 3 + byte.
  CHECK(tok->encode("\xC3\xA9", false) == ids{id_of(spec, sp), 3 + 0xC3, 3 + 0xA9});
  CHECK(tok->piece(3 + 0xC3) == "\xC3");
  CHECK(tok->piece(3 + 'a') == "a");
  CHECK(detokenize(*tok, tok->encode("a\xC3\xA9", false)) == " a\xC3\xA9");

  auto no_bytes = spm_spec({{sp, -1}, {"a", -1}}, /*byte_tokens=*/false);
  auto t2 = make(no_bytes);
  CHECK(t2->encode("a\xC3\xA9", false) == ids{id_of(no_bytes, sp), id_of(no_bytes, "a"), 0, 0});
}

TEST_CASE("spm splits out special tokens written in the text", "[tokenizer]") {
  auto spec = spm_spec({{sp, -1}, {"a", -1}, {"b", -1}, {sp + "a", -0.5f}, {sp + "b", -0.5f}});
  auto tok = make(spec);
  const token_id sa = id_of(spec, sp + "a"), sb = id_of(spec, sp + "b");
  // A fragment after a special token gets the space prefix again, as in llama.cpp.
  CHECK(tok->encode("a</s>b", false) == ids{sa, 2, sb});
  CHECK(tok->encode("</s>", false) == ids{2});
  CHECK(tok->encode("<s></s><unk>", true) == ids{1, 1, 2, 0});
  // Partial special text is ordinary text.
  CHECK(tok->encode("</s", false).size() == 4);
  CHECK(tok->piece(1).empty());
  CHECK(tok->piece(2).empty());
  CHECK(tok->piece(0).empty());
}

TEST_CASE("spm handles empty text, add_bos and ids out of range", "[tokenizer]") {
  auto spec = spm_spec({{sp, -1}});
  auto tok = make(spec);
  CHECK(tok->encode("", false).empty());
  CHECK(tok->encode("", true) == ids{1});
  CHECK(tok->encode(" ", true) == ids{1, id_of(spec, sp), id_of(spec, sp)});
  CHECK(tok->vocab_size() == spec.tokens.size());
  CHECK(tok->piece(-1).empty());
  CHECK(tok->piece(static_cast<token_id>(spec.tokens.size())).empty());
  spec.bos = -1;
  CHECK(make(spec)->encode("", true).empty());
}

TEST_CASE("spm encodes invalid UTF-8 as byte tokens that decode to the same bytes", "[tokenizer]") {
  auto spec = spm_spec({{sp, -1}, {"a", -1}, {"\xC3\xA9", -1}});
  spec.add_space_prefix = false;
  auto tok = make(spec);
  for (std::string text : {std::string("\xFF"), std::string("a\x80\x80z"), std::string("\xC3"),
                           std::string("\xE2\x82"), std::string("\xC3\xC3\xA9"),
                           std::string("\xF0\x9F\x99"), std::string("x\0y", 3)}) {
    auto v = tok->encode(text, false);
    CHECK_FALSE(v.empty());
    CHECK(detokenize(*tok, v) == text);
  }
}

// ---------------------------------------------------------------------------------------
// Byte-level BPE

TEST_CASE("bpe applies merges by rank, lowest first", "[tokenizer]") {
  auto spec = bpe_spec({"h e", "t h", "t he"});
  auto tok = make(spec);
  CHECK(tok->encode("the", false) == ids{id_of(spec, "the")});
  auto spec2 = bpe_spec({"t h", "h e", "t he"});
  auto tok2 = make(spec2);
  // "t h" first leaves th + e, and "th e" is no merge.
  CHECK(tok2->encode("the", false) == ids{id_of(spec2, "th"), 'e'});
  // Equal pairs: leftmost first ("aaa" -> aa + a).
  auto spec3 = bpe_spec({"a a"});
  CHECK(make(spec3)->encode("aaa", false) == ids{id_of(spec3, "aa"), 'a'});
}

TEST_CASE("bpe pre-tokenizes, maps bytes to the GPT-2 alphabet and decodes back", "[tokenizer]") {
  const std::string G = gpt2_char(' ');  // Ġ
  auto spec = bpe_spec({G + " w", G + "w o", "o " + G});
  auto tok = make(spec);
  // "o Ġ" would merge across the word boundary; the regex keeps " wo" apart from "o".
  CHECK(tok->encode("o wo", false) == ids{'o', id_of(spec, G + "wo")});
  CHECK(tok->piece(id_of(spec, G + "wo")) == " wo");
  CHECK(tok->piece('\n') == "\n");
  CHECK(tok->piece(0xC3) == "\xC3");
  const std::string text = "naïve café, 日本 🙂\n\tend";
  auto v = tok->encode(text, false);
  CHECK(v.size() == text.size());  // no merge applies: one token per byte
  CHECK(detokenize(*tok, v) == text);
}

TEST_CASE("bpe pre-tokenizer patterns differ on digits", "[tokenizer]") {
  std::vector<std::string> merges = {"3 4", "1 2"};
  auto gpt2 = bpe_spec(merges, "gpt2");
  CHECK(make(gpt2)->encode("12345", false) == ids{id_of(gpt2, "12"), id_of(gpt2, "34"), '5'});
  auto llama3 = bpe_spec(merges, "llama3");  // 123 | 45
  CHECK(make(llama3)->encode("12345", false) == ids{id_of(llama3, "12"), '3', '4', '5'});
  auto llama_bpe = bpe_spec(merges, "llama-bpe");
  CHECK(make(llama_bpe)->encode("12345", false) == make(llama3)->encode("12345", false));
  auto qwen2 = bpe_spec(merges, "qwen2");  // 1 | 2 | 3 | 4 | 5
  CHECK(make(qwen2)->encode("12345", false) == ids{'1', '2', '3', '4', '5'});
  // Llama 3 contractions are case-insensitive; GPT-2's are not.
  auto l3 = bpe_spec({"' S"}, "llama3");
  CHECK(make(l3)->encode("IT'S", false) == ids{'I', 'T', id_of(l3, "'S")});
}

TEST_CASE("bpe llama3 takes a word that is a token whole (ignore_merges)", "[tokenizer]") {
  // "abc" is a token but no merge sequence reaches it: Llama 3 uses it directly.
  auto spec = bpe_spec({"a b"}, "llama3");
  spec.tokens.insert(spec.tokens.end() - 2, "abc");
  spec.kinds.insert(spec.kinds.end() - 2, token_kind::normal);
  spec.bos = spec.eos = static_cast<token_id>(spec.tokens.size() - 2);
  auto tok = make(spec);
  CHECK(tok->encode("abc", false) == ids{id_of(spec, "abc")});
  spec.pre = "gpt2";
  CHECK(make(spec)->encode("abc", false) == ids{id_of(spec, "ab"), 'c'});
}

TEST_CASE("bpe splits out special and user-defined tokens", "[tokenizer]") {
  auto spec = bpe_spec({"h i"});
  auto tok = make(spec);
  const token_id eot = id_of(spec, "<|endoftext|>"), user = id_of(spec, "<|user|>");
  CHECK(tok->encode("hi<|endoftext|>hi", false) == ids{id_of(spec, "hi"), eot, id_of(spec, "hi")});
  CHECK(tok->encode("<|user|><|endoftext|>", true) == ids{eot, user, eot});
  CHECK(tok->piece(eot).empty());
  CHECK(tok->piece(user) == "<|user|>");
  CHECK(tok->encode("", true) == ids{eot});
  CHECK(tok->encode("", false).empty());
}

TEST_CASE("bpe encodes invalid UTF-8 without crashing and decodes it back", "[tokenizer]") {
  for (std::string pre : {"gpt2", "llama3", "qwen2"}) {
    auto tok = make(bpe_spec({"a b"}, pre));
    for (std::string text :
         {std::string("\xFF"), std::string("ab\x80\x80 ab"), std::string("\xC3"),
          std::string("  \xE2\x82"), std::string("\xED\xA0\x80 x"),
          std::string("1\xF4\x90\x80\x80"), std::string("x\0y", 3), std::string("\xC0\xAF\n\n")}) {
      INFO(pre);
      auto v = tok->encode(text, false);
      CHECK(detokenize(*tok, v) == text);
    }
  }
}

TEST_CASE("random bytes always encode and decode to themselves", "[tokenizer]") {
  std::mt19937 rng(7);
  auto spm = spm_spec({{sp, -1}, {"a", -1}, {sp + "a", -0.5f}});
  spm.add_space_prefix = false;
  auto t_spm = make(spm);
  auto t_bpe = make(bpe_spec({"a b", "ab c"}, "llama3"));
  for (int round = 0; round < 200; ++round) {
    std::string text(rng() % 40, '\0');
    for (char& c : text)
      c = static_cast<char>("ab c\n\xC3\xA9\xE2\x82\xAC\xF0\x9F\x99\x82\xFF"[rng() % 16]);
    CHECK(detokenize(*t_spm, t_spm->encode(text, false)) == text);
    CHECK(detokenize(*t_bpe, t_bpe->encode(text, false)) == text);
  }
}

TEST_CASE("a 100 KB text tokenizes fast (no quadratic rescans)", "[tokenizer]") {
  std::string text;
  while (text.size() < 100'000)
    text += "the quick brown fox 12345 jumps, ünïcödé 🙂 ";
  std::string long_word(100'000, 'a');
  std::string spaces = std::string(100'000, ' ') + "x";
  std::string lines;
  while (lines.size() < 100'000)
    lines += " \n\r\t 1 ";
  std::string noise(100'000, '\0');
  std::mt19937 rng(11);
  for (char& c : noise)
    c = static_cast<char>(rng() % 256);
  auto spm = spm_spec({{sp, -1}, {"a", -1}, {"aa", -0.5f}, {"aaaa", -0.4f}, {sp + "a", -0.6f}});
  auto t_spm = make(spm);
  for (std::string pre : {"gpt2", "llama3", "qwen2"}) {
    auto t_bpe = make(bpe_spec({"a a", "aa aa", "t h", "th e"}, pre));
    for (const std::string* s : {&text, &long_word, &spaces, &lines, &noise}) {
      INFO(pre << ", text of " << s->size() << " bytes starting '" << s->substr(0, 8) << "'");
      auto start = std::chrono::steady_clock::now();
      auto v1 = t_spm->encode(*s, true);
      auto v2 = t_bpe->encode(*s, true);
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      CHECK(detokenize(*t_bpe, v2) == *s);
      CHECK(detokenize(*t_spm, v1) == " " + *s);
      CHECK(secs < 5.0);  // generous guard: a quadratic scan would take minutes
    }
  }
}

// ---------------------------------------------------------------------------------------
// Validation

TEST_CASE("bad vocab specs are rejected with a message", "[tokenizer]") {
  vocab_spec empty;
  CHECK_THAT(error_of(empty), Catch::Contains("empty vocabulary"));

  auto spm = spm_spec({{"a", -1}});
  spm.scores.pop_back();
  CHECK_THAT(error_of(spm), Catch::Contains("scores"));
  spm = spm_spec({{"a", -1}});
  spm.kinds.pop_back();
  CHECK_THAT(error_of(spm), Catch::Contains("kinds"));
  spm = spm_spec({{"a", -1}});
  spm.bos = static_cast<token_id>(spm.tokens.size());
  CHECK_THAT(error_of(spm), Catch::Contains("bos token id"));
  spm = spm_spec({{"a", -1}});
  spm.eos = -2;
  CHECK_THAT(error_of(spm), Catch::Contains("eos token id"));
  spm = spm_spec({{"a", -1}});
  spm.unk = 100000;
  CHECK_THAT(error_of(spm), Catch::Contains("unk token id"));
  spm = spm_spec({{"a", -1}});
  spm.kinds[id_of(spm, "a")] = token_kind::byte;
  CHECK_THAT(error_of(spm), Catch::Contains("'a' is marked as a byte token"));

  auto bpe = bpe_spec({"a b"});
  bpe.merges.push_back("ab");
  CHECK_THAT(error_of(bpe), Catch::Contains("merge 1 'ab'"));
  bpe = bpe_spec({"a b"});
  bpe.merges.push_back("a zz");
  CHECK_THAT(error_of(bpe), Catch::Contains("merge 1 'a zz': right part"));
  bpe = bpe_spec({"a b"});
  bpe.merges.push_back("b a");
  CHECK_THAT(error_of(bpe), Catch::Contains("merge 1 'b a': result 'ba' is not in the vocabulary"));
  bpe = bpe_spec({"a b"});
  bpe.merges.push_back("a  b");
  CHECK_THAT(error_of(bpe), Catch::Contains("merge 1"));
  bpe = bpe_spec({"a b"});
  bpe.pre = "deepseek";
  CHECK_THAT(error_of(bpe), Catch::Contains("unsupported pre-tokenizer 'deepseek'"));
  bpe = bpe_spec({});
  bpe.tokens['\n'] = "\n";  // not the GPT-2 character for byte 0x0A
  CHECK_THAT(error_of(bpe), Catch::Contains("byte 0x0A"));
}
// ---------------------------------------------------------------------------------------
// Streaming detokenization

TEST_CASE("utf8_stream over byte-token pieces never emits broken UTF-8", "[tokenizer]") {
  const std::string text = "naïve → 🙂 日本語 done é";
  auto spm = spm_spec({{sp, -1}, {"a", -1}, {"n", -1}});
  auto bpe = bpe_spec({"a b"});
  for (auto tok : {make(spm), make(bpe)}) {
    auto v = tok->encode(text, false);
    const std::string expect = detokenize(*tok, v);
    CHECK((expect == text || expect == " " + text));
    utf8_stream s;
    std::string out;
    for (auto id : v) {
      std::string got = s.push(tok->piece(id));
      CHECK(valid_utf8(got));
      out += got;
    }
    out += s.finish();
    CHECK(out == expect);
  }
}
