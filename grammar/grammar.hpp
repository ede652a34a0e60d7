#pragma once
/// One entry point from a request's grammar (kind + source text) to the token automaton
/// that masks its logits, and the cache that compiles each grammar once per worker.
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/api_types.hpp"
#include "common/result.hpp"
#include "grammar/json_schema.hpp"
#include "grammar/regex.hpp"
#include "grammar/token_automaton.hpp"

namespace tokenmill::grammar {

/// Nesting depth of `json_object` output (the object itself is level 1).
constexpr uint32_t k_json_object_depth = 3;

/// Largest grammar source accepted (bytes).
constexpr size_t k_max_source_bytes = 64 * 1024;

/// The kind named `name` ("none", "regex", "json_schema", "json_object"), if any.
std::optional<grammar_kind> grammar_kind_from_string(std::string_view name);

/// Compiles a grammar to its byte DFA; errc::invalid_request saying what is wrong. The
/// frontend calls it to refuse bad grammars before queueing; workers call it (through
/// grammar_cache) to decode.
result<std::shared_ptr<const dfa>> compile_grammar(grammar_kind kind, std::string_view source);

/// Compiled grammars of one worker's model, by (kind, source); at most `capacity` kept,
/// least recently used dropped. Thread-safe.
class grammar_cache {
 public:
  grammar_cache(std::shared_ptr<const vocabulary> vocab, size_t capacity = 64);
  /// The automaton for the grammar (compiled on first use); nullptr for grammar_kind::none.
  result<std::shared_ptr<const token_automaton>> get(grammar_kind kind, std::string_view source);
  size_t compiled() const { return compiled_; }  ///< compilations so far (misses)

 private:
  std::shared_ptr<const vocabulary> vocab_;
  size_t capacity_;
  std::mutex mu_;
  std::list<std::string> lru_;  ///< keys, most recent first
  std::unordered_map<std::string, std::pair<std::shared_ptr<const token_automaton>,
                                            std::list<std::string>::iterator>>
      map_;
  size_t compiled_ = 0;
};

/// One sequence's place in its grammar; lives with the sequence in its worker. A worker
/// that takes a sequence over (disaggregation, live or recompute migration) rebuilds it
/// by advancing over the tokens the sequence has already produced: the automaton is a
/// function of the output, so nothing else needs to travel.
class grammar_state {
 public:
  /// Constrains the output that starts at token index `first_output` of the sequence (its
  /// prompt length, less the trailing prompt tokens that are output already).
  void start(std::shared_ptr<const token_automaton> a, size_t first_output);
  explicit operator bool() const { return automaton_ != nullptr; }
  /// Advances over `tokens[applied()..]` (the sequence's tokens, prompt first);
  /// errc::invalid_request naming the first token that does not fit.
  result<void> catch_up(std::span<const token_id> tokens);
  /// The tokens allowed next (call after catch_up).
  std::span<const uint64_t> allowed() const { return automaton_->allowed(state_); }
  /// The output so far is complete and nothing may follow it: the sequence is done.
  bool finished() const { return automaton_->finished(state_); }
  size_t applied() const { return applied_; }
  int32_t state() const { return state_; }

 private:
  std::shared_ptr<const token_automaton> automaton_;
  int32_t state_ = 0;
  size_t applied_ = 0;  ///< tokens of the sequence advanced over (prompt included)
};

}  // namespace tokenmill::grammar
