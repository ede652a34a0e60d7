/// The byte-level BPE tokenizer (GGUF `gpt2`, tokenizer.json BPE): a PCRE2 pre-tokenizer
/// splits words, whose GPT-2-alphabet bytes merge by rank. See make_text_tokenizer
/// (engine/text_tokenizer.hpp) for the rules.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/detail/vocab_core.hpp"

namespace tokenmill::detail {

namespace {

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
    if (auto r = t->core_.init(spec); !r) return r.error();
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

  std::string piece(token_id id) const override { return core_.piece(id); }
  uint32_t vocab_size() const override { return core_.size(); }

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

}  // namespace

result<std::shared_ptr<const tokenizer>> make_bpe_tokenizer(const vocab_spec& spec) {
  return bpe_tokenizer::make(spec);
}

}  // namespace tokenmill::detail
