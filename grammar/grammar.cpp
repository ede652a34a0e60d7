#include "grammar/grammar.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tokenmill::grammar {

std::optional<grammar_kind> grammar_kind_from_string(std::string_view name) {
  for (auto k : {grammar_kind::none, grammar_kind::regex, grammar_kind::json_schema,
                 grammar_kind::json_object})
    if (to_string(k) == name) return k;
  return std::nullopt;
}

result<std::shared_ptr<const dfa>> compile_grammar(grammar_kind kind, std::string_view source) {
  if (source.size() > k_max_source_bytes)
    return error_info{errc::invalid_request,
                      fmt::format("grammar of {} bytes is above the limit of {}", source.size(),
                                  k_max_source_bytes)};
  std::string pattern;
  switch (kind) {
    case grammar_kind::none:
      return error_info{errc::invalid_request, "no grammar to compile"};
    case grammar_kind::regex:
      pattern = std::string(source);
      break;
    case grammar_kind::json_schema: {
      auto r = json_schema_to_regex(source);
      if (!r) return r.error();
      pattern = std::move(*r);
      break;
    }
    case grammar_kind::json_object:
      pattern = json_object_regex(k_json_object_depth);
      break;
  }
  auto d = compile_regex(pattern);
  if (!d) return d.error();
  return std::make_shared<const dfa>(std::move(*d));
}

grammar_cache::grammar_cache(std::shared_ptr<const vocabulary> vocab, size_t capacity)
    : vocab_(std::move(vocab)), capacity_(capacity == 0 ? 1 : capacity) {}

result<std::shared_ptr<const token_automaton>> grammar_cache::get(grammar_kind kind,
                                                                  std::string_view source) {
  if (kind == grammar_kind::none) return std::shared_ptr<const token_automaton>{};
  std::string key = std::string(to_string(kind)) + '\n' + std::string(source);
  {
    std::lock_guard lock(mu_);
    if (auto it = map_.find(key); it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
  }
  // Compiled outside the lock: two workers' threads racing on one grammar both compile,
  // and the second result replaces nothing.
  auto d = compile_grammar(kind, source);
  if (!d) return d.error();
  auto a = std::make_shared<const token_automaton>(std::move(*d), vocab_);
  std::lock_guard lock(mu_);
  ++compiled_;
  if (auto it = map_.find(key); it != map_.end()) return it->second.first;
  lru_.push_front(key);
  map_.emplace(std::move(key), std::make_pair(a, lru_.begin()));
  while (map_.size() > capacity_) {
    map_.erase(lru_.back());
    lru_.pop_back();
  }
  return std::shared_ptr<const token_automaton>(a);
}

namespace {

bool stuck(const token_automaton& a, int32_t state) {
  auto m = a.allowed(state);
  return std::none_of(m.begin(), m.end(), [](uint64_t w) { return w != 0; });
}

}  // namespace

void grammar_state::start(std::shared_ptr<const token_automaton> a, size_t first_output) {
  automaton_ = std::move(a);
  state_ = automaton_ ? automaton_->start() : 0;
  applied_ = first_output;
}

result<void> grammar_state::catch_up(std::span<const token_id> tokens) {
  if (!automaton_) return {};
  for (; applied_ < tokens.size(); ++applied_) {
    int32_t next = automaton_->advance(state_, tokens[applied_]);
    if (next == dfa::dead)
      return error_info{
          errc::invalid_request,
          fmt::format(
              "constrained decoding: token {} at position {} does not fit "
              "the grammar{}",
              tokens[applied_], applied_,
              stuck(*automaton_, state_) ? " (no token of the vocabulary can continue it)" : "")};
    state_ = next;
  }
  return {};
}

}  // namespace tokenmill::grammar
