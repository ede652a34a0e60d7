#include "engine/text_tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace tokenmill {

namespace {

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's stand-in for a space.
constexpr std::string_view space_marker = "\xE2\x96\x81";

/// The three pre-tokenizer patterns, as Hugging Face's tokenizer.json spells them.
constexpr std::string_view gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view llama3_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view qwen2_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

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

/// Heterogeneous lookup: find a std::string key by string_view without allocating.
struct sv_hash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using piece_map = std::unordered_map<std::string, token_id, sv_hash, std::equal_to<>>;

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

/// GPT-2's reversible byte -> printable code point alphabet: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
struct byte_alphabet {
  std::array<std::string, 256> utf8;              ///< byte -> its character, UTF-8
  std::unordered_map<uint32_t, uint8_t> to_byte;  ///< code point -> byte
};

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

/// What both tokenizers share: the vocabulary, its lookup map, the special tokens that are
/// split out of the text before tokenizing and the decoded piece of every id.
struct vocab_core {
  std::vector<std::string> tokens;
  std::vector<token_kind> kinds;    ///< always tokens.size() entries
  piece_map ids;                    ///< text -> id; the last id wins for duplicate texts
  std::vector<token_id> specials;   ///< control/user-defined/unknown ids, longest text first
  std::vector<std::string> pieces;  ///< id -> raw bytes (piece())
  token_id bos = -1;

  /// A span of the input: raw text (id < 0) or a special token written literally.
  struct fragment {
    size_t off = 0;
    size_t len = 0;
    token_id id = -1;
  };

  /// Validates the parts of `spec` both kinds share and fills everything but `pieces`.
  std::string init(const vocab_spec& spec) {
    const size_t n = spec.tokens.size();
    if (n == 0) return "empty vocabulary";
    if (n > static_cast<size_t>(INT32_MAX)) return "vocabulary too large";
    if (!spec.kinds.empty() && spec.kinds.size() != n)
      return "token kinds: " + std::to_string(spec.kinds.size()) + " entries for " +
             std::to_string(n) + " tokens";
    for (auto [name, id] : {std::pair{"bos", spec.bos}, {"eos", spec.eos}, {"unk", spec.unk}})
      if (id < -1 || id >= static_cast<token_id>(n))
        return std::string(name) + " token id " + std::to_string(id) + " out of range [0, " +
               std::to_string(n) + ")";
    tokens = spec.tokens;
    kinds = spec.kinds.empty() ? std::vector<token_kind>(n, token_kind::normal) : spec.kinds;
    if (spec.unk >= 0 && kinds[spec.unk] == token_kind::normal)
      kinds[spec.unk] = token_kind::unknown;
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

  /// Splits `text` around literal special tokens, longest tokens first (as llama.cpp does).
  std::vector<fragment> split(std::string_view text) const {
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

  token_id lookup(std::string_view s) const {
    auto it = ids.find(s);
    return it == ids.end() ? -1 : it->second;
  }
};

// ---------------------------------------------------------------------------------------
// SentencePiece-style (GGUF `llama`)

class spm_tokenizer final : public tokenizer {
 public:
  static result<std::shared_ptr<const tokenizer>> make(const vocab_spec& spec) {
    auto t = std::make_shared<spm_tokenizer>();
    if (auto err = t->core_.init(spec); !err.empty()) return invalid(err);
    const size_t n = spec.tokens.size();
    if (spec.scores.size() != n)
      return invalid("token scores: " + std::to_string(spec.scores.size()) + " entries for " +
                     std::to_string(n) + " tokens");
    t->scores_ = spec.scores;
    t->unk_ = spec.unk;
    t->add_space_prefix_ = spec.add_space_prefix;
    for (unsigned b = 0; b < 256; ++b)
      t->byte_ids_[b] = t->core_.lookup(byte_token_text(b));
    auto& core = t->core_;
    core.pieces.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const std::string& s = core.tokens[i];
      switch (core.kinds[i]) {
        case token_kind::byte: {
          int b = parse_byte_token(s);
          if (b < 0)
            return invalid("token " + std::to_string(i) + " '" + s +
                           "' is marked as a byte token but is not <0xNN>");
          core.pieces[i] = std::string(1, static_cast<char>(b));
          break;
        }
        case token_kind::user_defined:
          core.pieces[i] = s;
          break;
        case token_kind::control:
        case token_kind::unknown:
        case token_kind::unused:
          break;  // not text: ""
        default: {
          if (int b = parse_byte_token(s); b >= 0 && spec.kinds.empty()) {
            core.pieces[i] = std::string(1, static_cast<char>(b));  // untyped vocabularies
            break;
          }
          std::string& p = core.pieces[i];
          for (size_t k = 0; k < s.size();) {
            if (s.compare(k, space_marker.size(), space_marker) == 0) {
              p += ' ';
              k += space_marker.size();
            } else {
              p += s[k++];
            }
          }
        }
      }
    }
    return std::shared_ptr<const tokenizer>(std::move(t));
  }

  std::vector<token_id> encode(std::string_view text, bool add_bos) const override {
    std::vector<token_id> out;
    out.reserve(text.size() / 3 + 2);
    if (add_bos && core_.bos >= 0) out.push_back(core_.bos);
    bool prev_special = true;  // the first fragment gets the space prefix too
    for (const auto& f : core_.split(text)) {
      if (f.id >= 0) {
        out.push_back(f.id);
        prev_special = true;
      } else {
        encode_fragment(text.substr(f.off, f.len), add_space_prefix_ && prev_special, out);
        prev_special = false;
      }
    }
    return out;
  }

  std::string piece(token_id id) const override {
    if (id < 0 || static_cast<size_t>(id) >= core_.pieces.size()) return {};
    return core_.pieces[id];
  }

  uint32_t vocab_size() const override { return static_cast<uint32_t>(core_.tokens.size()); }

 private:
  struct symbol {
    int prev;
    int next;
    size_t start;
    size_t len;  ///< bytes; 0 once merged into its left neighbour
  };
  struct bigram {
    float score;
    int left;
    int right;
    size_t len;  ///< bytes of left + right when queued; a mismatch marks a stale entry
  };
  struct bigram_order {
    bool operator()(const bigram& a, const bigram& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  void encode_fragment(std::string_view raw, bool prefix, std::vector<token_id>& out) const {
    std::string s;
    s.reserve(raw.size() + raw.size() / 2 + 3);
    if (prefix) s += space_marker;
    for (char c : raw) {
      if (c == ' ')
        s += space_marker;
      else
        s += c;
    }
    // One symbol per UTF-8 character. A byte that starts no well-formed character is a
    // symbol of its own (emitted through byte fallback), so malformed text can neither
    // stall nor swallow the "▁" after it. (llama.cpp takes the length from the lead byte
    // alone; the two agree on valid UTF-8.)
    std::vector<symbol> syms;
    syms.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      size_t end = i;
      uint32_t cp = 0;
      size_t len = next_utf8(s, end, cp) ? end - i : 1;
      int idx = static_cast<int>(syms.size());
      syms.push_back({idx - 1, idx + 1, i, len});
      i += len;
    }
    if (syms.empty()) return;
    syms.back().next = -1;

    std::vector<bigram> storage;
    storage.reserve(syms.size());
    std::priority_queue<bigram, std::vector<bigram>, bigram_order> queue(bigram_order{},
                                                                         std::move(storage));
    auto try_add = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      size_t len = syms[l].len + syms[r].len;
      token_id id = core_.lookup(std::string_view(s).substr(syms[l].start, len));
      if (id < 0) return;
      queue.push({scores_[id], l, r, len});
    };
    for (int i = 1; i < static_cast<int>(syms.size()); ++i)
      try_add(i - 1, i);
    while (!queue.empty()) {
      bigram b = queue.top();
      queue.pop();
      symbol& l = syms[b.left];
      symbol& r = syms[b.right];
      if (l.len == 0 || r.len == 0 || l.len + r.len != b.len) continue;  // stale
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    for (int i = 0; i >= 0; i = syms[i].next) {
      std::string_view text = std::string_view(s).substr(syms[i].start, syms[i].len);
      if (token_id id = core_.lookup(text); id >= 0) {
        out.push_back(id);
        continue;
      }
      for (unsigned char c : text) {
        token_id id = byte_ids_[c] >= 0 ? byte_ids_[c] : unk_;
        if (id >= 0) out.push_back(id);  // TODO(spec): no byte token and no <unk>: dropped
      }
    }
  }

  vocab_core core_;
  std::vector<float> scores_;
  std::array<token_id, 256> byte_ids_{};
  token_id unk_ = -1;
  bool add_space_prefix_ = true;
};

// ---------------------------------------------------------------------------------------
// Byte-level BPE (GGUF `gpt2`, tokenizer.json BPE)

struct pcre2_code_deleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct pcre2_match_data_deleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

class bpe_tokenizer final : public tokenizer {
 public:
  static result<std::shared_ptr<const tokenizer>> make(const vocab_spec& spec) {
    auto t = std::make_shared<bpe_tokenizer>();
    if (auto err = t->core_.init(spec); !err.empty()) return invalid(err);
    auto& core = t->core_;
    const size_t n = core.tokens.size();
    if (!spec.scores.empty() && spec.scores.size() != n)
      return invalid("token scores: " + std::to_string(spec.scores.size()) + " entries for " +
                     std::to_string(n) + " tokens");
    std::string pre = canonical_pre(spec.pre);
    if (pre.empty())
      return invalid("unsupported pre-tokenizer '" + spec.pre +
                     "' (known: gpt2, llama3/llama-bpe, qwen2)");
    t->ignore_merges_ = pre == "llama3";  // as Llama 3's tokenizer.json and llama.cpp do

    const auto& alphabet = gpt2_bytes();
    for (unsigned b = 0; b < 256; ++b) {
      t->byte_ids_[b] = core.lookup(alphabet.utf8[b]);
      if (t->byte_ids_[b] < 0) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", b);
        return invalid("byte-level vocabulary lacks the token for byte " + std::string(hex) +
                       " ('" + alphabet.utf8[b] + "')");
      }
    }
    t->merges_.reserve(spec.merges.size());
    for (size_t r = 0; r < spec.merges.size(); ++r) {
      const std::string& m = spec.merges[r];
      auto bad = [&](std::string_view why) {
        return invalid("merge " + std::to_string(r) + " '" + m + "': " + std::string(why));
      };
      size_t sp = m.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 == m.size() ||
          m.find(' ', sp + 1) != std::string::npos)
        return bad("expected two tokens separated by one space");
      std::string_view a = std::string_view(m).substr(0, sp);
      std::string_view b = std::string_view(m).substr(sp + 1);
      token_id ia = core.lookup(a), ib = core.lookup(b);
      if (ia < 0) return bad("left part is not in the vocabulary");
      if (ib < 0) return bad("right part is not in the vocabulary");
      std::string joined = std::string(a) + std::string(b);
      token_id ij = core.lookup(joined);
      if (ij < 0) return bad("result '" + joined + "' is not in the vocabulary");
      t->merges_.emplace(pair_key(ia, ib), merge_rule{static_cast<uint32_t>(r), ij});
    }

    std::string_view pattern = pattern_of(pre);
    int errcode = 0;
    PCRE2_SIZE erroffset = 0;
    t->regex_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                  PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &errcode,
                                  &erroffset, nullptr));
    if (!t->regex_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(errcode, msg, sizeof msg);
      return error_info{errc::internal, "pre-tokenizer '" + pre + "': regex does not compile: " +
                                            reinterpret_cast<const char*>(msg)};
    }
    pcre2_jit_compile(t->regex_.get(), PCRE2_JIT_COMPLETE);  // optional: interpreted otherwise

    core.pieces.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const std::string& s = core.tokens[i];
      switch (core.kinds[i]) {
        case token_kind::user_defined:
          core.pieces[i] = s;
          break;
        case token_kind::control:
        case token_kind::unknown:
        case token_kind::unused:
          break;
        default:
          core.pieces[i] = decode_byte_level(s);
      }
    }
    return std::shared_ptr<const tokenizer>(std::move(t));
  }

  std::vector<token_id> encode(std::string_view text, bool add_bos) const override {
    std::vector<token_id> out;
    out.reserve(text.size() / 3 + 2);
    if (add_bos && core_.bos >= 0) out.push_back(core_.bos);
    std::unique_ptr<pcre2_match_data, pcre2_match_data_deleter> md(
        pcre2_match_data_create_from_pattern(regex_.get(), nullptr));
    scratch sc;
    for (const auto& f : core_.split(text)) {
      if (f.id >= 0)
        out.push_back(f.id);
      else
        encode_fragment(text.substr(f.off, f.len), md.get(), sc, out);
    }
    return out;
  }

  std::string piece(token_id id) const override {
    if (id < 0 || static_cast<size_t>(id) >= core_.pieces.size()) return {};
    return core_.pieces[id];
  }

  uint32_t vocab_size() const override { return static_cast<uint32_t>(core_.tokens.size()); }

 private:
  struct merge_rule {
    uint32_t rank;
    token_id result;
  };
  struct symbol {
    int prev;
    int next;
    token_id id;  ///< -1 once merged into its left neighbour
  };
  struct candidate {
    uint32_t rank;
    int left;
    int right;
    token_id left_id;  ///< ids when queued; a mismatch marks a stale entry
    token_id right_id;
  };
  struct candidate_order {
    bool operator()(const candidate& a, const candidate& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  /// Buffers reused across the words of one encode call.
  struct scratch {
    std::vector<symbol> syms;
    std::vector<candidate> heap;
    std::string mapped;
  };

  static uint64_t pair_key(token_id a, token_id b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  /// Token text in the GPT-2 alphabet -> raw bytes; characters outside it pass through.
  static std::string decode_byte_level(std::string_view s) {
    const auto& alphabet = gpt2_bytes();
    std::string out;
    for (size_t i = 0; i < s.size();) {
      size_t start = i;
      uint32_t cp = 0;
      if (!next_utf8(s, i, cp)) {
        out += s[i++];
        continue;
      }
      auto it = alphabet.to_byte.find(cp);
      if (it != alphabet.to_byte.end())
        out += static_cast<char>(it->second);
      else
        out.append(s.substr(start, i - start));
    }
    return out;
  }

  void encode_fragment(std::string_view text, pcre2_match_data* md, scratch& sc,
                       std::vector<token_id>& out) const {
    auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      int rc = md ? pcre2_match(regex_.get(), subject, text.size(), pos, 0, md, nullptr)
                  : PCRE2_ERROR_NOMEMORY;
      if (rc < 0) {
        // No match (only bytes that are not UTF-8 are left) or a matcher error: the rest
        // is one word, still encoded byte by byte.
        encode_word(text.substr(pos), sc, out);
        return;
      }
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t start = ov[0], end = ov[1];
      if (start < pos || start > text.size()) start = pos;                   // defensive
      if (start > pos) encode_word(text.substr(pos, start - pos), sc, out);  // invalid UTF-8
      if (end <= start) end = start + 1;  // an empty match must still advance
      end = std::min(end, text.size());
      encode_word(text.substr(start, end - start), sc, out);
      pos = end;
    }
  }

  void encode_word(std::string_view word, scratch& sc, std::vector<token_id>& out) const {
    if (word.empty()) return;
    const auto& alphabet = gpt2_bytes();
    if (ignore_merges_) {
      sc.mapped.clear();
      for (unsigned char c : word)
        sc.mapped += alphabet.utf8[c];
      if (token_id id = core_.lookup(sc.mapped); id >= 0) {
        out.push_back(id);
        return;
      }
    }
    if (word.size() == 1) {
      out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
      return;
    }
    auto& syms = sc.syms;
    syms.clear();
    for (size_t i = 0; i < word.size(); ++i) {
      int idx = static_cast<int>(i);
      syms.push_back({idx - 1, idx + 1, byte_ids_[static_cast<unsigned char>(word[i])]});
    }
    syms.back().next = -1;
    sc.heap.clear();
    std::priority_queue<candidate, std::vector<candidate>, candidate_order> queue(
        candidate_order{}, std::move(sc.heap));
    auto try_add = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      auto it = merges_.find(pair_key(syms[l].id, syms[r].id));
      if (it == merges_.end()) return;
      queue.push({it->second.rank, l, r, syms[l].id, syms[r].id});
    };
    for (int i = 1; i < static_cast<int>(syms.size()); ++i)
      try_add(i - 1, i);
    while (!queue.empty()) {
      candidate c = queue.top();
      queue.pop();
      symbol& l = syms[c.left];
      symbol& r = syms[c.right];
      if (l.id != c.left_id || r.id != c.right_id || l.next != c.right) continue;  // stale
      l.id = merges_.at(pair_key(c.left_id, c.right_id)).result;
      r.id = -1;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = c.left;
      try_add(l.prev, c.left);
      try_add(c.left, l.next);
    }
    for (int i = 0; i >= 0; i = syms[i].next)
      out.push_back(syms[i].id);  // every merge result is a vocabulary token (checked)
    sc.heap.clear();
  }

  vocab_core core_;
  std::array<token_id, 256> byte_ids_{};
  std::unordered_map<uint64_t, merge_rule> merges_;  ///< (left id, right id) -> rule
  std::unique_ptr<pcre2_code, pcre2_code_deleter> regex_;
  bool ignore_merges_ = false;
};

// ---------------------------------------------------------------------------------------
// tokenizer.json

using json = nlohmann::json;

/// Reads a JSON file; the error names the file.
result<json> read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return invalid(path + ": cannot open");
  std::stringstream buf;
  buf << in.rdbuf();
  json j = json::parse(buf.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid(path + ": not valid JSON");
  return j;
}

/// A pre_tokenizer element that names a known pattern: "" if none.
std::string pre_from_pattern(std::string_view p) {
  if (p == gpt2_pattern) return "gpt2";
  if (p == llama3_pattern) return "llama3";
  if (p == qwen2_pattern) return "qwen2";
  return {};
}

const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

/// True when a decoder (or a Sequence of them) contains Metaspace or Replace("▁", " ").
bool has_metaspace_decoder(const json& dec) {
  if (!dec.is_object()) return false;
  std::string type = dec.value("type", "");
  if (type == "Metaspace") return true;
  if (type == "Replace") {
    const json* pat = member(dec, "pattern");
    return pat && pat->is_object() && pat->value("String", "") == space_marker;
  }
  if (type == "Sequence")
    if (const json* ds = member(dec, "decoders"); ds && ds->is_array())
      for (const auto& d : *ds)
        if (has_metaspace_decoder(d)) return true;
  return false;
}

/// A special token's text from tokenizer_config.json: a string or {"content": ...}.
std::string config_token(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return {};
}

result<vocab_spec> read_tokenizer_json_impl(const std::string& path) {
  auto parsed = read_json_file(path);
  if (!parsed) return parsed.error();
  const json& root = *parsed;
  auto fail = [&](const std::string& key, const std::string& what) {
    return invalid(path + ": key '" + key + "': " + what);
  };
  if (!root.is_object()) return invalid(path + ": top level is not a JSON object");
  const json* model = member(root, "model");
  if (!model) return fail("model", "missing");
  if (!model->is_object()) return fail("model", "expected an object");
  const json* type = member(*model, "type");
  if (!type) return fail("model.type", "missing");
  if (!type->is_string()) return fail("model.type", "expected a string");
  if (*type != "BPE")
    return invalid(path + ": unsupported tokenizer.json: model.type '" + type->get<std::string>() +
                   "' (only BPE)");
  const json* vocab = member(*model, "vocab");
  if (!vocab) return fail("model.vocab", "missing");
  if (!vocab->is_object()) return fail("model.vocab", "expected an object of token -> id");

  vocab_spec spec;
  spec.model = vocab_spec::model_kind::bpe;
  std::vector<std::string>& tokens = spec.tokens;
  std::vector<bool> seen;
  auto place = [&](size_t id, const std::string& text) {
    if (id >= tokens.size()) {
      tokens.resize(id + 1);
      seen.resize(id + 1, false);
    }
    tokens[id] = text;
    seen[id] = true;
  };
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= INT32_MAX)
      return fail("model.vocab", "entry '" + it.key() + "' has no valid id");
    size_t id = it.value().get<size_t>();
    if (id < seen.size() && seen[id])
      return fail("model.vocab", "id " + std::to_string(id) + " is used by '" + tokens[id] +
                                     "' and '" + it.key() + "'");
    place(id, it.key());
  }
  // Added tokens: their own ids, control ("special": true) or user-defined.
  std::vector<std::pair<size_t, token_kind>> added;
  if (const json* at = member(root, "added_tokens")) {
    if (!at->is_array()) return fail("added_tokens", "expected an array");
    for (size_t i = 0; i < at->size(); ++i) {
      const json& a = (*at)[i];
      std::string key = "added_tokens[" + std::to_string(i) + "]";
      if (!a.is_object()) return fail(key, "expected an object");
      const json* id = member(a, "id");
      const json* content = member(a, "content");
      if (!id || !id->is_number_integer() || id->get<int64_t>() < 0 ||
          id->get<int64_t>() >= INT32_MAX)
        return fail(key + ".id", "missing or not a valid id");
      if (!content || !content->is_string())
        return fail(key + ".content", "missing or not a string");
      const json* special = member(a, "special");
      if (special && !special->is_boolean()) return fail(key + ".special", "expected a boolean");
      place(id->get<size_t>(), content->get<std::string>());
      added.emplace_back(id->get<size_t>(), special && special->get<bool>()
                                                ? token_kind::control
                                                : token_kind::user_defined);
    }
  }
  if (tokens.empty()) return fail("model.vocab", "empty");
  spec.kinds.assign(tokens.size(), token_kind::normal);
  for (size_t i = 0; i < tokens.size(); ++i)
    if (!seen[i]) spec.kinds[i] = token_kind::unused;  // a hole in the id range

  piece_map ids;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (seen[i]) ids.insert_or_assign(tokens[i], static_cast<token_id>(i));
  auto id_of = [&](const std::string& s) -> token_id {
    auto it = ids.find(s);
    return it == ids.end() ? -1 : it->second;
  };

  if (const json* merges = member(*model, "merges")) {
    if (!merges->is_array()) return fail("model.merges", "expected an array");
    spec.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const json& m = (*merges)[i];
      std::string key = "model.merges[" + std::to_string(i) + "]";
      if (m.is_string()) {
        spec.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        std::string a = m[0].get<std::string>(), b = m[1].get<std::string>();
        if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
          return invalid(path + ": unsupported tokenizer.json: " + key +
                         " has a token containing a space");
        spec.merges.push_back(a + " " + b);
      } else {
        return fail(key, "expected \"a b\" or [\"a\", \"b\"]");
      }
    }
  }
  if (const json* unk = member(*model, "unk_token")) {
    if (!unk->is_string()) return fail("model.unk_token", "expected a string");
    spec.unk = id_of(unk->get<std::string>());
    if (spec.unk < 0)
      return fail("model.unk_token", "'" + unk->get<std::string>() + "' is not in the vocabulary");
  }

  bool byte_fallback = false;
  if (const json* bf = member(*model, "byte_fallback")) {
    if (!bf->is_boolean()) return fail("model.byte_fallback", "expected a boolean");
    byte_fallback = bf->get<bool>();
  }
  const json* pre = member(root, "pre_tokenizer");
  const json* decoder = member(root, "decoder");
  const json* normalizer = member(root, "normalizer");

  if (byte_fallback && decoder && has_metaspace_decoder(*decoder)) {
    // SentencePiece-style BPE (Llama 2, Mistral): the spm algorithm with scores that
    // follow the merge order, so the earliest merge producing a token ranks highest.
    spec.model = vocab_spec::model_kind::spm;
    spec.pre.clear();
    const float unranked = -1e30f;
    spec.scores.assign(tokens.size(), unranked);
    for (size_t r = 0; r < spec.merges.size(); ++r) {
      const std::string& m = spec.merges[r];
      size_t sp = m.find(' ');
      if (sp == std::string::npos)
        return fail("model.merges[" + std::to_string(r) + "]", "no space");
      token_id id = id_of(m.substr(0, sp) + m.substr(sp + 1));
      if (id >= 0 && spec.scores[id] == unranked) spec.scores[id] = -static_cast<float>(r);
    }
    spec.merges.clear();
    for (size_t i = 0; i < tokens.size(); ++i)
      if (spec.kinds[i] == token_kind::normal && parse_byte_token(tokens[i]) >= 0)
        spec.kinds[i] = token_kind::byte;
    // The space prefix: normalizer Prepend("▁") or a Metaspace pre-tokenizer that adds it.
    spec.add_space_prefix = false;
    std::function<void(const json&)> scan = [&](const json& j) {
      if (!j.is_object()) return;
      std::string t = j.value("type", "");
      if (t == "Prepend" && j.value("prepend", "") == space_marker) spec.add_space_prefix = true;
      if (t == "Metaspace") {
        if (j.value("add_prefix_space", false)) spec.add_space_prefix = true;
        std::string scheme = j.value("prepend_scheme", "");
        if (scheme == "always" || scheme == "first") spec.add_space_prefix = true;
      }
      for (const char* list : {"normalizers", "pretokenizers"})
        if (const json* l = member(j, list); l && l->is_array())
          for (const auto& e : *l)
            scan(e);
    };
    if (normalizer) scan(*normalizer);
    if (pre) scan(*pre);
  } else {
    if (byte_fallback)
      return invalid(path +
                     ": unsupported tokenizer.json: model.byte_fallback without a "
                     "Metaspace/Replace(\"▁\") decoder");
    // Qwen2 ships an NFC normalizer; like llama.cpp we leave the text as given.
    // TODO(spec): apply NFC, which only matters for text that is not already NFC.
    if (normalizer && !(normalizer->is_object() && normalizer->value("type", "") == "NFC"))
      return invalid(path + ": unsupported tokenizer.json: key 'normalizer': only null or NFC");
    if (!pre) return fail("pre_tokenizer", "missing (expected ByteLevel)");
    auto check_byte_level = [&](const json& bl, const std::string& key) -> std::string {
      if (const json* aps = member(bl, "add_prefix_space"); aps && aps->is_boolean() && *aps)
        return path + ": unsupported tokenizer.json: key '" + key + ".add_prefix_space' is true";
      return {};
    };
    std::string type = pre->is_object() ? pre->value("type", "") : "";
    if (type == "ByteLevel") {
      if (auto e = check_byte_level(*pre, "pre_tokenizer"); !e.empty()) return invalid(e);
      const json* ur = member(*pre, "use_regex");
      if (ur && ur->is_boolean() && !ur->get<bool>())
        return invalid(path +
                       ": unsupported tokenizer.json: key 'pre_tokenizer': ByteLevel "
                       "without a regex splits nothing");
      spec.pre = "gpt2";
    } else if (type == "Sequence") {
      const json* list = member(*pre, "pretokenizers");
      if (!list || !list->is_array())
        return fail("pre_tokenizer.pretokenizers", "expected an array");
      std::string found;
      bool byte_level = false;
      for (size_t i = 0; i < list->size(); ++i) {
        const json& e = (*list)[i];
        std::string key = "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]";
        std::string t = e.is_object() ? e.value("type", "") : "";
        if (t == "Split") {
          const json* pat = member(e, "pattern");
          std::string p;
          if (pat && pat->is_object() && pat->contains("Regex") && (*pat)["Regex"].is_string())
            p = (*pat)["Regex"].get<std::string>();
          else if (pat && pat->is_object() && pat->contains("String") &&
                   (*pat)["String"].is_string())
            p = (*pat)["String"].get<std::string>();
          else
            return fail(key + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
          std::string name = pre_from_pattern(p);
          if (name.empty())
            return invalid(path + ": unsupported tokenizer.json: key '" + key +
                           ".pattern': unknown pre-tokenizer pattern '" + p + "'");
          if (!found.empty())
            return invalid(path + ": unsupported tokenizer.json: key '" + key +
                           "': more than one Split");
          found = name;
        } else if (t == "ByteLevel") {
          if (auto err = check_byte_level(e, key); !err.empty()) return invalid(err);
          const json* ur = member(e, "use_regex");
          bool use_regex = !ur || (ur->is_boolean() && ur->get<bool>());
          if (use_regex) {
            if (!found.empty())
              return invalid(path + ": unsupported tokenizer.json: key '" + key +
                             "': a Split followed by a ByteLevel with use_regex true");
            found = "gpt2";
          }
          byte_level = true;
        } else {
          return invalid(path + ": unsupported tokenizer.json: key '" + key +
                         "': pre-tokenizer type '" + t + "'");
        }
      }
      if (!byte_level)
        return invalid(path + ": unsupported tokenizer.json: key 'pre_tokenizer': no ByteLevel");
      if (found.empty())
        return invalid(path +
                       ": unsupported tokenizer.json: key 'pre_tokenizer': no split pattern");
      spec.pre = found;
    } else {
      return invalid(path + ": unsupported tokenizer.json: key 'pre_tokenizer': type '" + type +
                     "'");
    }
  }
  for (auto [id, kind] : added)
    spec.kinds[id] = static_cast<token_id>(id) == spec.unk ? token_kind::unknown : kind;
  if (spec.unk >= 0 && spec.kinds[spec.unk] == token_kind::normal)
    spec.kinds[spec.unk] = token_kind::unknown;

  // BOS/EOS: tokenizer_config.json beside the file, else TemplateProcessing's leading token.
  spec.bos = spec.eos = -1;
  spec.add_bos = false;
  bool add_bos_known = false;
  namespace fs = std::filesystem;
  fs::path config_path = fs::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (fs::is_regular_file(config_path, ec)) {
    auto cfg = read_json_file(config_path.string());
    if (!cfg) return cfg.error();
    const json& c = *cfg;
    std::string cpath = config_path.string();
    if (!c.is_object()) return invalid(cpath + ": top level is not a JSON object");
    for (auto [key, slot] : {std::pair{"bos_token", &spec.bos}, {"eos_token", &spec.eos}}) {
      const json* v = member(c, key);
      if (!v) continue;
      std::string text = config_token(*v);
      if (text.empty())
        return invalid(cpath + ": key '" + key + "': expected a string or {\"content\": ...}");
      *slot = id_of(text);
      if (*slot < 0)
        return invalid(cpath + ": key '" + key + "': '" + text + "' is not in the vocabulary");
    }
    if (const json* ct = member(c, "chat_template")) {
      // A string, or a list of {"name", "template"} where "default" is the chat one.
      if (ct->is_string()) {
        spec.chat_template = ct->get<std::string>();
      } else if (ct->is_array()) {
        for (const auto& e : *ct)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
              e["template"].is_string())
            spec.chat_template = e["template"].get<std::string>();
      } else if (!ct->is_null()) {
        return invalid(cpath + ": key 'chat_template': expected a string or a list of templates");
      }
    }
    if (const json* ab = member(c, "add_bos_token")) {
      if (!ab->is_boolean()) return invalid(cpath + ": key 'add_bos_token': expected a boolean");
      spec.add_bos = ab->get<bool>();
      add_bos_known = true;
    }
  }
  if (const json* pp = member(root, "post_processor")) {
    std::function<const json*(const json&)> find_template = [&](const json& j) -> const json* {
      if (!j.is_object()) return nullptr;
      std::string t = j.value("type", "");
      if (t == "TemplateProcessing") return &j;
      if (t == "Sequence")
        if (const json* ps = member(j, "processors"); ps && ps->is_array())
          for (const auto& p : *ps)
            if (const json* found = find_template(p)) return found;
      return nullptr;
    };
    if (const json* tp = find_template(*pp)) {
      const json* single = member(*tp, "single");
      token_id lead = -1;
      if (single && single->is_array() && !single->empty()) {
        const json& first = (*single)[0];
        if (const json* st = member(first, "SpecialToken");
            st && st->contains("id") && (*st)["id"].is_string())
          lead = id_of((*st)["id"].get<std::string>());
      }
      if (lead >= 0) {
        if (spec.bos < 0) spec.bos = lead;
        if (!add_bos_known) spec.add_bos = lead == spec.bos;
        add_bos_known = true;
      }
    }
  }
  if (!add_bos_known) spec.add_bos = false;
  if (spec.bos < 0) spec.add_bos = false;
  return spec;
}

}  // namespace

result<std::shared_ptr<const tokenizer>> make_text_tokenizer(const vocab_spec& spec) {
  try {
    if (spec.model == vocab_spec::model_kind::spm) return spm_tokenizer::make(spec);
    return bpe_tokenizer::make(spec);
  } catch (const std::exception& e) {
    return error_info{errc::internal, std::string("make_text_tokenizer: ") + e.what()};
  }
}

result<vocab_spec> read_tokenizer_json(const std::string& path) {
  try {
    return read_tokenizer_json_impl(path);
  } catch (const std::exception& e) {
    return invalid(path + ": " + e.what());
  }
}

std::string write_tokenizer_json(const vocab_spec& spec, const std::string& path) {
  try {
    if (spec.model != vocab_spec::model_kind::bpe)
      return path + ": only byte-level BPE vocabularies can be written as tokenizer.json";
    if (auto t = make_text_tokenizer(spec); !t) return path + ": " + t.error().message;
    const std::string pre = canonical_pre(spec.pre);
    using ojson = nlohmann::ordered_json;
    const size_t n = spec.tokens.size();
    auto kind = [&](size_t i) { return spec.kinds.empty() ? token_kind::normal : spec.kinds[i]; };

    ojson added = ojson::array();
    ojson vocab = ojson::object();
    // ordered_json's own insert searches linearly; append to its underlying vector instead
    // (ids in order) and check duplicates with a hash set.
    auto& vocab_entries = static_cast<std::vector<std::pair<const std::string, ojson>>&>(
        vocab.get_ref<ojson::object_t&>());
    vocab_entries.reserve(n);
    std::unordered_set<std::string_view> written;
    for (size_t i = 0; i < n; ++i) {
      const std::string& t = spec.tokens[i];
      token_kind k = kind(i);
      if (k == token_kind::unused && t.empty()) continue;  // a hole in the id range
      if (!written.insert(t).second)
        return path + ": token " + std::to_string(i) + " '" + t +
               "' appears twice; tokenizer.json cannot hold that";
      vocab_entries.emplace_back(t, ojson(i));
      if (k == token_kind::control || k == token_kind::user_defined || k == token_kind::unknown) {
        bool special = k != token_kind::user_defined;
        added.push_back({{"id", i},
                         {"content", t},
                         {"single_word", false},
                         {"lstrip", false},
                         {"rstrip", false},
                         {"normalized", !special},
                         {"special", special}});
      }
    }
    ojson pre_tok;
    if (pre == "gpt2") {
      pre_tok = {{"type", "ByteLevel"},
                 {"add_prefix_space", false},
                 {"trim_offsets", true},
                 {"use_regex", true}};
    } else {
      pre_tok = {
          {"type", "Sequence"},
          {"pretokenizers", ojson::array({{{"type", "Split"},
                                           {"pattern", {{"Regex", std::string(pattern_of(pre))}}},
                                           {"behavior", "Isolated"},
                                           {"invert", false}},
                                          {{"type", "ByteLevel"},
                                           {"add_prefix_space", false},
                                           {"trim_offsets", true},
                                           {"use_regex", false}}})}};
    }
    ojson post = nullptr;
    if (spec.add_bos && spec.bos >= 0) {
      const std::string& b = spec.tokens[spec.bos];
      post = {
          {"type", "TemplateProcessing"},
          {"single", ojson::array({{{"SpecialToken", {{"id", b}, {"type_id", 0}}}},
                                   {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
          {"pair", ojson::array({{{"SpecialToken", {{"id", b}, {"type_id", 0}}}},
                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                 {{"SpecialToken", {{"id", b}, {"type_id", 1}}}},
                                 {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
          {"special_tokens",
           {{b, {{"id", b}, {"ids", ojson::array({spec.bos})}, {"tokens", ojson::array({b})}}}}}};
    } else {
      post = {{"type", "ByteLevel"},
              {"add_prefix_space", true},
              {"trim_offsets", false},
              {"use_regex", true}};
    }
    ojson model = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", spec.unk >= 0 ? ojson(spec.tokens[spec.unk]) : ojson(nullptr)},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", false},
                   {"byte_fallback", false},
                   {"ignore_merges", pre == "llama3"},
                   {"vocab", std::move(vocab)},
                   {"merges", spec.merges}};
    ojson root = {{"version", "1.0"},
                  {"truncation", nullptr},
                  {"padding", nullptr},
                  {"added_tokens", std::move(added)},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", std::move(pre_tok)},
                  {"post_processor", std::move(post)},
                  {"decoder",
                   {{"type", "ByteLevel"},
                    {"add_prefix_space", true},
                    {"trim_offsets", true},
                    {"use_regex", true}}},
                  {"model", std::move(model)}};
    ojson config = {{"add_bos_token", spec.add_bos && spec.bos >= 0},
                    {"add_eos_token", false},
                    {"bos_token", spec.bos >= 0 ? ojson(spec.tokens[spec.bos]) : ojson(nullptr)},
                    {"eos_token", spec.eos >= 0 ? ojson(spec.tokens[spec.eos]) : ojson(nullptr)},
                    {"clean_up_tokenization_spaces", false},
                    {"model_max_length", 1000000000000000019884624838656.0},
                    {"tokenizer_class", "PreTrainedTokenizerFast"}};
    if (spec.unk >= 0) config["unk_token"] = spec.tokens[spec.unk];

    auto write = [](const std::filesystem::path& p, const ojson& j) -> std::string {
      std::ofstream out(p, std::ios::binary | std::ios::trunc);
      if (!out) return p.string() + ": cannot open for writing";
      out << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
      out.close();
      if (!out) return p.string() + ": write failed";
      return {};
    };
    if (auto e = write(path, root); !e.empty()) return e;
    return write(std::filesystem::path(path).parent_path() / "tokenizer_config.json", config);
  } catch (const std::exception& e) {
    return path + ": " + e.what();
  }
}

}  // namespace tokenmill
