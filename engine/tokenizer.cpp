#include "engine/tokenizer.hpp"

namespace tokenmill {

std::vector<token_id> byte_word_tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<token_id> out;
  out.reserve(text.size() + 1);
  if (add_bos) out.push_back(1);
  for (unsigned char c : text)
    out.push_back(static_cast<token_id>(c) + 3);
  return out;
}

std::string byte_word_tokenizer::piece(token_id id) const {
  if (id < 3 || static_cast<uint32_t>(id) >= vocab_) return {};
  if (id < 259) return std::string(1, static_cast<char>(id - 3));
  static constexpr std::string_view cons = "bdfgklmnprstvz";
  static constexpr std::string_view vow = "aeiou";
  uint32_t v = static_cast<uint32_t>(id - 259);
  std::string w = " ";
  int syllables = 1 + static_cast<int>(v % 3);
  v /= 3;
  for (int i = 0; i < syllables; ++i) {
    w += cons[v % cons.size()];
    v /= static_cast<uint32_t>(cons.size());
    w += vow[v % vow.size()];
    v /= static_cast<uint32_t>(vow.size());
  }
  return w;
}

namespace {
constexpr std::string_view replacement = "\xEF\xBF\xBD";  // U+FFFD

/// Length of the well-formed UTF-8 character at the start of `s` (RFC 3629: no overlongs,
/// no surrogates, nothing above U+10FFFF); 0 when `s` is a proper prefix of one; -1 when
/// the first byte cannot start one.
int utf8_char_len(std::string_view s) {
  auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  unsigned char c = b(0);
  if (c < 0x80) return 1;
  int len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int i = 1; i < len; ++i) {
    if (static_cast<size_t>(i) >= s.size()) return 0;
    unsigned char x = b(i);
    if (i == 1 ? (x < lo || x > hi) : (x & 0xC0) != 0x80) return -1;
  }
  return len;
}
}  // namespace

std::string utf8_stream::push(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    int len = utf8_char_len(std::string_view(pending_).substr(i));
    if (len == 0) break;  // an unfinished character: wait for its other bytes
    if (len < 0) {
      // A byte that cannot be (or continue) a character: never emitted as is.
      out += replacement;
      ++i;
      continue;
    }
    out.append(pending_, i, static_cast<size_t>(len));
    i += static_cast<size_t>(len);
  }
  pending_.erase(0, i);
  return out;
}

std::string utf8_stream::finish() {
  if (pending_.empty()) return {};
  pending_.clear();
  return std::string(replacement);
}

}  // namespace tokenmill
