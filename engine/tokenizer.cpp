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
/// Length of the UTF-8 sequence a lead byte starts; 0 for a continuation or invalid byte.
int utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 0;
}
}  // namespace

std::string utf8_stream::push(std::string_view bytes) {
  pending_.append(bytes);
  // Find the start of the last (possibly incomplete) character.
  size_t n = pending_.size();
  size_t cut = n;
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    auto c = static_cast<unsigned char>(pending_[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking back
    int len = utf8_len(c);
    if (len > static_cast<int>(back)) cut = n - back;  // lead byte whose sequence is unfinished
    break;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string utf8_stream::finish() {
  if (pending_.empty()) return {};
  pending_.clear();
  return "\xEF\xBF\xBD";
}

}  // namespace tokenmill
