/// The SentencePiece-style tokenizer (GGUF `llama`): score-ordered bigram merges with byte
/// fallback. See make_text_tokenizer (engine/text_tokenizer.hpp) for the rules.
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

class spm_tokenizer final : public tokenizer {
 public:
  static result<std::shared_ptr<const tokenizer>> make(const vocab_spec& spec) {
    auto t = std::make_shared<spm_tokenizer>();
    if (auto r = t->core_.init(spec); !r) return r.error();
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

  std::string piece(token_id id) const override { return core_.piece(id); }
  uint32_t vocab_size() const override { return core_.size(); }

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

}  // namespace

result<std::shared_ptr<const tokenizer>> make_spm_tokenizer(const vocab_spec& spec) {
  return spm_tokenizer::make(spec);
}

}  // namespace tokenmill::detail
