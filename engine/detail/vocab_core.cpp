#include "engine/detail/vocab_core.hpp"

#include <algorithm>
#include <climits>
#include <utility>

namespace tokenmill::detail {

error_info invalid(std::string msg) {
  return {errc::invalid_model, std::move(msg)};
}

/// The canonical name ("gpt2", "llama3", "qwen2") of a pre-tokenizer name; "" if unknown.
std::string canonical_pre(std::string_view name) {
  if (name.empty() || name == "gpt2" || name == "gpt-2") return "gpt2";
  if (name == "llama3" || name == "llama-bpe") return "llama3";
  if (name == "qwen2") return "qwen2";
  return {};
}

std::string_view pattern_of(std::string_view canonical) {
  if (canonical == "llama3") return llama3_pattern;
  if (canonical == "qwen2") return qwen2_pattern;
  return gpt2_pattern;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Decodes one well-formed UTF-8 character at `i` (advancing `i`); false (and `i`
/// unchanged) when the bytes there are not one.
bool next_utf8(std::string_view s, size_t& i, uint32_t& cp) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) return false;
  uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return false;
    v = (v << 6) | (b(i + k) & 0x3F);
  }
  static constexpr uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < min_cp[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return false;
  cp = v;
  i += len;
  return true;
}

const byte_alphabet& gpt2_bytes() {
  static const byte_alphabet table = [] {
    byte_alphabet t;
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      uint32_t cp = printable ? b : 256 + extra++;
      append_utf8(t.utf8[b], cp);
      t.to_byte.emplace(cp, static_cast<uint8_t>(b));
    }
    return t;
  }();
  return table;
}

/// "<0xNN>" -> NN; -1 if `s` is not such a token.
int parse_byte_token(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(s[3]), lo = hex(s[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string byte_token_text(unsigned b) {
  static constexpr char digits[] = "0123456789ABCDEF";
  return std::string("<0x") + digits[b >> 4] + digits[b & 15] + ">";
}

result<void> vocab_core::init(const vocab_spec& spec) {
  const size_t n = spec.tokens.size();
  if (n == 0) return invalid("empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) return invalid("vocabulary too large");
  if (!spec.kinds.empty() && spec.kinds.size() != n)
    return invalid("token kinds: " + std::to_string(spec.kinds.size()) + " entries for " +
                   std::to_string(n) + " tokens");
  for (auto [name, id] : {std::pair{"bos", spec.bos}, {"eos", spec.eos}, {"unk", spec.unk}})
    if (id < -1 || id >= static_cast<token_id>(n))
      return invalid(std::string(name) + " token id " + std::to_string(id) + " out of range [0, " +
                     std::to_string(n) + ")");
  tokens = spec.tokens;
  kinds = spec.kinds.empty() ? std::vector<token_kind>(n, token_kind::normal) : spec.kinds;
  if (spec.unk >= 0 && kinds[spec.unk] == token_kind::normal) kinds[spec.unk] = token_kind::unknown;
  bos = spec.bos;
  ids.reserve(n);
  for (size_t i = 0; i < n; ++i)
    ids.insert_or_assign(tokens[i], static_cast<token_id>(i));
  for (size_t i = 0; i < n; ++i) {
    auto k = kinds[i];
    if ((k == token_kind::control || k == token_kind::user_defined || k == token_kind::unknown) &&
        !tokens[i].empty())
      specials.push_back(static_cast<token_id>(i));
  }
  std::stable_sort(specials.begin(), specials.end(),
                   [&](token_id a, token_id b) { return tokens[a].size() > tokens[b].size(); });
  return {};
}

std::vector<vocab_core::fragment> vocab_core::split(std::string_view text) const {
  std::vector<fragment> frags;
  if (text.empty()) return frags;
  frags.push_back({0, text.size(), -1});
  std::vector<fragment> next;
  for (token_id sid : specials) {
    const std::string& st = tokens[sid];
    if (text.find(st) == std::string_view::npos) continue;
    next.clear();
    for (const auto& f : frags) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      std::string_view region = text.substr(0, f.off + f.len);
      size_t pos = f.off;
      for (size_t hit; (hit = region.find(st, pos)) != std::string_view::npos;) {
        if (hit > pos) next.push_back({pos, hit - pos, -1});
        next.push_back({hit, st.size(), sid});
        pos = hit + st.size();
      }
      if (pos < region.size()) next.push_back({pos, region.size() - pos, -1});
    }
    frags.swap(next);
  }
  return frags;
}

}  // namespace tokenmill::detail
