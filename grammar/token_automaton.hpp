#pragma once
/// Constrained decoding over a vocabulary: a grammar's byte DFA lifted to tokens. For a
/// DFA state, the allowed tokens are those whose bytes keep the DFA alive; they are found
/// by walking a trie of the vocabulary once per state (dead branches pruned) and cached,
/// so a decode step costs one cache lookup and one walk of the sampled token's bytes.
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/ids.hpp"
#include "grammar/regex.hpp"

namespace tokenmill::grammar {

/// A model's vocabulary as byte strings, in a trie (built once per model and shared).
/// Tokens with no bytes (specials: BOS, padding, …) are never allowed; `eos` is allowed
/// exactly when the grammar accepts.
class vocabulary {
 public:
  /// `pieces[id]` is token id's bytes ("" for special tokens).
  vocabulary(std::vector<std::string> pieces, token_id eos);
  size_t size() const { return pieces_.size(); }
  token_id eos() const { return eos_; }
  const std::string& piece(token_id id) const { return pieces_[size_t(id)]; }

 private:
  friend class token_automaton;
  std::vector<std::string> pieces_;
  token_id eos_;
  // Trie in preorder: node i's subtree is [i, end_[i]); its byte is byte_[i]; its parent
  // parent_[i] (-1: the root's children). Tokens ending at node i: tokens_[tok_begin_[i],
  // tok_begin_[i + 1]).
  std::vector<uint8_t> byte_;
  std::vector<int32_t> parent_;
  std::vector<int32_t> end_;
  std::vector<uint32_t> tok_begin_;
  std::vector<token_id> tokens_;
};

/// One bit per token id (64 ids per word); bit set = allowed.
using token_mask = std::vector<uint64_t>;

inline bool mask_allows(std::span<const uint64_t> mask, token_id id) {
  return (mask[size_t(id) / 64] >> (size_t(id) % 64)) & 1;
}

/// A grammar over one vocabulary. Thread-safe: workers share one per (grammar, model).
class token_automaton {
 public:
  token_automaton(std::shared_ptr<const dfa> d, std::shared_ptr<const vocabulary> v);

  int32_t start() const { return dfa_->start; }
  /// The tokens allowed in `state` (computed on first use, then cached).
  std::span<const uint64_t> allowed(int32_t state) const;
  /// The state after `id` in `state`; dfa::dead when the token is not allowed there.
  /// EOS leaves an accepting state unchanged.
  int32_t advance(int32_t state, token_id id) const;
  /// Advances over `ids` from the start state (how a worker rebuilds a sequence's state
  /// after migration or disaggregation); dfa::dead when they do not fit the grammar.
  int32_t replay(std::span<const token_id> ids) const;
  bool accepting(int32_t state) const { return dfa_->accepting[size_t(state)] != 0; }
  /// Accepting with no way to go on: only EOS is allowed.
  bool finished(int32_t state) const { return accepting(state) && dfa_->final(state); }
  const dfa& automaton() const { return *dfa_; }
  const vocabulary& vocab() const { return *vocab_; }
  /// States whose mask has been computed (for tests and metrics).
  size_t cached_states() const;

 private:
  token_mask compute(int32_t state) const;

  std::shared_ptr<const dfa> dfa_;
  std::shared_ptr<const vocabulary> vocab_;
  mutable std::mutex mu_;
  mutable std::vector<std::unique_ptr<const token_mask>> cache_;  ///< per DFA state
};

}  // namespace tokenmill::grammar
