// Over 600 lines: the spm, bpe and tokenizer.json cases share the vocabulary builders above them.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "engine/text_tokenizer.hpp"
#include "test_result.hpp"

using namespace tokenmill;
namespace fs = std::filesystem;
using ids = std::vector<token_id>;

namespace {

const std::string sp = "\xE2\x96\x81";  // ▁

/// A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then `pieces`.
vocab_spec spm_spec(const std::vector<std::pair<std::string, float>>& pieces,
                    bool byte_tokens = true) {
  vocab_spec s;
  s.model = vocab_spec::model_kind::spm;
  auto add = [&](std::string t, float score, token_kind k) {
    s.tokens.push_back(std::move(t));
    s.scores.push_back(score);
    s.kinds.push_back(k);
  };
  add("<unk>", 0, token_kind::unknown);
  add("<s>", 0, token_kind::control);
  add("</s>", 0, token_kind::control);
  if (byte_tokens) {
    static constexpr char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b)
      add(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">", 0, token_kind::byte);
  }
  for (const auto& [t, score] : pieces)
    add(t, score, token_kind::normal);
  s.bos = 1;
  s.eos = 2;
  s.unk = 0;
  return s;
}

/// The id of `text` in `spec` (the test's vocabularies have no duplicates).
token_id id_of(const vocab_spec& spec, const std::string& text) {
  for (size_t i = 0; i < spec.tokens.size(); ++i)
    if (spec.tokens[i] == text) return static_cast<token_id>(i);
  FAIL("no token '" << text << "'");
  return -1;
}

/// GPT-2's byte -> character mapping, written out independently of the implementation.
std::string gpt2_char(unsigned b) {
  bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  unsigned cp = b;
  if (!printable) {
    unsigned n = 0;
    for (unsigned k = 0; k < b; ++k)
      if (!((k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC) || k >= 0xAE)) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

/// A byte-level BPE vocabulary: ids 0..255 are the bytes (in byte order), then the merge
/// results in merge order, then <|endoftext|> (control) and <|user|> (user-defined).
vocab_spec bpe_spec(const std::vector<std::string>& merges, std::string pre = "gpt2") {
  vocab_spec s;
  s.model = vocab_spec::model_kind::bpe;
  s.pre = std::move(pre);
  for (unsigned b = 0; b < 256; ++b)
    s.tokens.push_back(gpt2_char(b));
  for (const auto& m : merges) {
    auto space = m.find(' ');
    std::string joined = m.substr(0, space) + m.substr(space + 1);
    if (std::find(s.tokens.begin(), s.tokens.end(), joined) == s.tokens.end())
      s.tokens.push_back(joined);
  }
  s.merges = merges;
  s.kinds.assign(s.tokens.size(), token_kind::normal);
  s.tokens.push_back("<|endoftext|>");
  s.kinds.push_back(token_kind::control);
  s.tokens.push_back("<|user|>");
  s.kinds.push_back(token_kind::user_defined);
  s.bos = s.eos = static_cast<token_id>(s.tokens.size() - 2);
  s.add_bos = false;
  return s;
}

std::shared_ptr<const tokenizer> make(const vocab_spec& spec) {
  auto t = make_text_tokenizer(spec);
  INFO((t ? std::string() : t.error().message));
  REQUIRE(t.ok());
  return *t;
}

std::string detokenize(const tokenizer& tok, const ids& v) {
  std::string s;
  for (auto id : v)
    s += tok.piece(id);
  return s;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

std::string error_of(const vocab_spec& spec) {
  auto t = make_text_tokenizer(spec);
  REQUIRE_FALSE(t.ok());
  CHECK(t.error().code == errc::invalid_model);
  return t.error().message;
}

/// A fresh directory, removed at the end of the test.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("tokenmill-tok-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
    return (path / name).string();
  }
};

}  // namespace

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
// tokenizer.json

TEST_CASE("write_tokenizer_json and read_tokenizer_json round-trip", "[tokenizer]") {
  const std::string G = gpt2_char(' ');
  for (std::string pre : {"gpt2", "llama3", "qwen2"}) {
    INFO(pre);
    temp_dir dir;
    auto spec = bpe_spec({"h e", G + " t", G + "t he", "1 2"}, pre);
    spec.bos = id_of(spec, "<|endoftext|>");
    spec.eos = id_of(spec, "<|user|>");
    spec.add_bos = true;
    std::string path = (dir.path / "tokenizer.json").string();
    REQUIRE(write_tokenizer_json(spec, path));
    REQUIRE(fs::exists(dir.path / "tokenizer_config.json"));
    auto back = read_tokenizer_json(path);
    INFO((back ? std::string() : back.error().message));
    REQUIRE(back.ok());
    CHECK(back->model == vocab_spec::model_kind::bpe);
    CHECK(back->tokens == spec.tokens);
    CHECK(back->merges == spec.merges);
    CHECK(back->kinds == spec.kinds);
    CHECK(back->bos == spec.bos);
    CHECK(back->eos == spec.eos);
    CHECK(back->add_bos);
    CHECK(back->pre == pre);
    const std::string text = "the 123 <|user|>the";
    CHECK(make(*back)->encode(text, true) == make(spec)->encode(text, true));

    // Without tokenizer_config.json the TemplateProcessing hint still gives BOS.
    fs::remove(dir.path / "tokenizer_config.json");
    auto hinted = read_tokenizer_json(path);
    REQUIRE(hinted.ok());
    CHECK(hinted->bos == spec.bos);
    CHECK(hinted->eos == -1);
    CHECK(hinted->add_bos);
  }
}

TEST_CASE("read_tokenizer_json reads merges as pairs and tokenizer_config objects", "[tokenizer]") {
  temp_dir dir;
  nlohmann::json vocab = nlohmann::json::object();
  for (unsigned b = 0; b < 256; ++b)
    vocab[gpt2_char(b)] = b;
  vocab["ab"] = 256;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 257}, {"content", "<s>"}, {"special", true}},
        {{"id", 258}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer", {{"type", "NFC"}}},  // as Qwen2 ships it: accepted, not applied
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", nlohmann::json::array({nlohmann::json::array({"a", "b"})})}}}};
  std::string path = dir.write("tokenizer.json", j.dump());
  dir.write("tokenizer_config.json",
            R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                "add_bos_token": true})");
  auto spec = read_tokenizer_json(path);
  INFO((spec ? std::string() : spec.error().message));
  REQUIRE(spec.ok());
  CHECK(spec->tokens.size() == 259);
  CHECK(spec->merges == std::vector<std::string>{"a b"});
  CHECK(spec->bos == 257);
  CHECK(spec->eos == 258);
  CHECK(spec->add_bos);
  CHECK(spec->kinds[257] == token_kind::control);
  CHECK(spec->pre == "gpt2");
  CHECK(spec->chat_template.empty());

  // chat_template: a string, or a list of named templates where "default" is the chat one.
  dir.write("tokenizer_config.json", R"({"chat_template": "{{ '<|im_start|>' }}"})");
  auto with = read_tokenizer_json(path);
  REQUIRE(with.ok());
  CHECK(with->chat_template == "{{ '<|im_start|>' }}");
  dir.write("tokenizer_config.json",
            R"({"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]})");
  auto listed = read_tokenizer_json(path);
  REQUIRE(listed.ok());
  CHECK(listed->chat_template == "D");
  dir.write("tokenizer_config.json", R"({"chat_template": 5})");
  auto bad = read_tokenizer_json(path);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("chat_template") != std::string::npos);
  CHECK(make(*spec)->encode("ab</s>", true) == ids{257, 256, 258});
}

TEST_CASE("read_tokenizer_json reads SentencePiece-style BPE with byte fallback", "[tokenizer]") {
  temp_dir dir;
  nlohmann::json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  static constexpr char hex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b)
    vocab[std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">"] = 3 + b;
  int next = 259;
  for (const std::string& t : std::vector<std::string>{sp, "a", "b", sp + "a", "ab", sp + "ab"})
    vocab[t] = next++;
  nlohmann::json j = {
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", sp}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", sp}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", sp}}}, {"content", " "}},
          {{"type", "ByteFallback"}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", {sp + " a", "a b", sp + "a b"}}}}};
  std::string path = dir.write("tokenizer.json", j.dump());
  auto spec = read_tokenizer_json(path);
  INFO((spec ? std::string() : spec.error().message));
  REQUIRE(spec.ok());
  CHECK(spec->model == vocab_spec::model_kind::spm);
  CHECK(spec->add_space_prefix);
  CHECK(spec->bos == 1);
  CHECK(spec->add_bos);
  CHECK(spec->unk == 0);
  CHECK(spec->kinds[3 + 'a'] == token_kind::byte);
  auto tok = make(*spec);
  CHECK(tok->encode("ab a", true) == ids{1, 264, 262});
  CHECK(tok->encode("\xC3\xA9", false) == ids{259, 3 + 0xC3, 3 + 0xA9});
}

TEST_CASE("bad tokenizer.json files are rejected naming the file and key", "[tokenizer]") {
  temp_dir dir;
  auto err = [&](const std::string& text) {
    std::string path = dir.write("tokenizer.json", text);
    auto r = read_tokenizer_json(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == errc::invalid_model);
    CHECK_THAT(r.error().message, Catch::Contains(path));
    return r.error().message;
  };
  CHECK_THAT(read_tokenizer_json((dir.path / "absent.json").string()).error().message,
             Catch::Contains("cannot open"));
  CHECK_THAT(err("{not json"), Catch::Contains("not valid JSON"));
  CHECK_THAT(err("[1, 2]"), Catch::Contains("not a JSON object"));
  CHECK_THAT(err("{}"), Catch::Contains("key 'model': missing"));
  CHECK_THAT(err(R"({"model": 3})"), Catch::Contains("key 'model': expected an object"));
  CHECK_THAT(err(R"({"model": {"vocab": {}}})"), Catch::Contains("'model.type'"));
  CHECK_THAT(err(R"({"model": {"type": "Unigram", "vocab": []}})"),
             Catch::Contains("model.type 'Unigram'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": [1]}})"), Catch::Contains("'model.vocab'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})"),
             Catch::Contains("entry 'a'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": 5}})"),
             Catch::Contains("'model.merges'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [7]}})"),
             Catch::Contains("'model.merges[0]'"));
  CHECK_THAT(err(R"({"added_tokens": {}, "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'added_tokens'"));
  CHECK_THAT(err(R"({"added_tokens": [{"id": "x", "content": "b"}],
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'added_tokens[0].id'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'pre_tokenizer'"));
  CHECK_THAT(err(R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                       {"type": "Split", "pattern": {"Regex": "\\d+|\\w+"}, "behavior": "Isolated"},
                       {"type": "ByteLevel", "use_regex": false}]},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("unknown pre-tokenizer pattern '\\d+|\\w+'"));
  CHECK_THAT(err(R"({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "ByteLevel"},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'normalizer'"));
  CHECK_THAT(err(R"({"pre_tokenizer": {"type": "Whitespace"},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("type 'Whitespace'"));
  CHECK_THAT(err(R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                       {"type": "Digits", "individual_digits": true},
                       {"type": "ByteLevel", "use_regex": true}]},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'Digits'"));

  // A valid file whose tokenizer_config.json names a token that does not exist.
  temp_dir dir2;
  nlohmann::json vocab = nlohmann::json::object();
  for (unsigned b = 0; b < 256; ++b)
    vocab[gpt2_char(b)] = b;
  nlohmann::json j = {
      {"pre_tokenizer", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  std::string path = dir2.write("tokenizer.json", j.dump());
  REQUIRE(read_tokenizer_json(path).ok());
  std::string cfg = dir2.write("tokenizer_config.json", R"({"bos_token": "<nope>"})");
  auto r = read_tokenizer_json(path);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message,
             Catch::Contains(cfg) && Catch::Contains("'bos_token'") && Catch::Contains("<nope>"));
}

TEST_CASE("write_tokenizer_json refuses what it cannot write", "[tokenizer]") {
  temp_dir dir;
  std::string path = (dir.path / "tokenizer.json").string();
  CHECK_THAT(test::error_text(write_tokenizer_json(spm_spec({{"a", -1}}), path)),
             Catch::Contains("byte-level"));
  auto bad = bpe_spec({"a b"});
  bad.merges.push_back("b a");
  CHECK_THAT(test::error_text(write_tokenizer_json(bad, path)), Catch::Contains("merge 1"));
  CHECK(write_tokenizer_json(bad, path).error().code == errc::invalid_model);
  auto nowhere = (dir.path / "no" / "such" / "t.json").string();
  CHECK_THAT(test::error_text(write_tokenizer_json(bpe_spec({}), nowhere)),
             Catch::Contains("cannot open"));
  CHECK(write_tokenizer_json(bpe_spec({}), nowhere).error().code == errc::invalid_request);
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
