#pragma once
/// Vocabularies and helpers shared by the text tokenizer tests (test_text_tokenizer.cpp,
/// test_tokenizer_json.cpp): small SentencePiece-style and byte-level BPE specs built
/// independently of the implementation, and a scratch directory.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <unistd.h>

#include "engine/text_tokenizer.hpp"

namespace tokenmill::test {

namespace fs = std::filesystem;
using ids = std::vector<token_id>;

inline const std::string sp = "\xE2\x96\x81";  // ▁

/// A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then `pieces`.
inline vocab_spec spm_spec(const std::vector<std::pair<std::string, float>>& pieces,
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
inline token_id id_of(const vocab_spec& spec, const std::string& text) {
  for (size_t i = 0; i < spec.tokens.size(); ++i)
    if (spec.tokens[i] == text) return static_cast<token_id>(i);
  FAIL("no token '" << text << "'");
  return -1;
}

/// GPT-2's byte -> character mapping, written out independently of the implementation.
inline std::string gpt2_char(unsigned b) {
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
inline vocab_spec bpe_spec(const std::vector<std::string>& merges, std::string pre = "gpt2") {
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

inline std::shared_ptr<const tokenizer> make(const vocab_spec& spec) {
  auto t = make_text_tokenizer(spec);
  INFO((t ? std::string() : t.error().message));
  REQUIRE(t.ok());
  return *t;
}

inline std::string detokenize(const tokenizer& tok, const ids& v) {
  std::string s;
  for (auto id : v)
    s += tok.piece(id);
  return s;
}

inline bool valid_utf8(std::string_view s) {
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

inline std::string error_of(const vocab_spec& spec) {
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

}  // namespace tokenmill::test
