#include "grammar/token_automaton.hpp"

#include <algorithm>
#include <numeric>

namespace tokenmill::grammar {

vocabulary::vocabulary(std::vector<std::string> pieces, token_id eos)
    : pieces_(std::move(pieces)), eos_(eos) {
  std::vector<token_id> order;
  for (size_t i = 0; i < pieces_.size(); ++i)
    if (!pieces_[i].empty()) order.push_back(token_id(i));
  std::stable_sort(order.begin(), order.end(),
                   [&](token_id a, token_id b) { return pieces_[size_t(a)] < pieces_[size_t(b)]; });
  // Sorted pieces visit the trie in preorder: each piece shares its longest common prefix
  // with the path of the one before and adds nodes for the rest.
  std::vector<int32_t> path;  // node at each depth of the current path
  std::vector<std::pair<int32_t, token_id>> ends;
  const std::string* prev = nullptr;
  for (token_id id : order) {
    const std::string& p = pieces_[size_t(id)];
    size_t common = 0;
    if (prev)
      while (common < p.size() && common < prev->size() && common < path.size() &&
             p[common] == (*prev)[common])
        ++common;
    path.resize(common);
    for (size_t d = common; d < p.size(); ++d) {
      byte_.push_back(uint8_t(p[d]));
      parent_.push_back(d == 0 ? -1 : path[d - 1]);
      path.push_back(int32_t(byte_.size() - 1));
    }
    ends.emplace_back(path.back(), id);
    prev = &p;
  }
  const size_t n = byte_.size();
  // Subtree ends: a node's subtree closes where the next node not below it starts.
  end_.assign(n, int32_t(n));
  std::vector<int32_t> depth(n);
  std::vector<int32_t> open;
  for (size_t i = 0; i < n; ++i) {
    depth[i] = parent_[i] < 0 ? 0 : depth[size_t(parent_[i])] + 1;
    while (!open.empty() && depth[size_t(open.back())] >= depth[i]) {
      end_[size_t(open.back())] = int32_t(i);
      open.pop_back();
    }
    open.push_back(int32_t(i));
  }
  tok_begin_.assign(n + 1, 0);
  for (auto& [node, id] : ends)
    ++tok_begin_[size_t(node) + 1];
  std::partial_sum(tok_begin_.begin(), tok_begin_.end(), tok_begin_.begin());
  tokens_.resize(ends.size());
  std::vector<uint32_t> fill(tok_begin_.begin(), tok_begin_.end() - 1);
  for (auto& [node, id] : ends)
    tokens_[fill[size_t(node)]++] = id;
}

token_automaton::token_automaton(std::shared_ptr<const dfa> d, std::shared_ptr<const vocabulary> v)
    : dfa_(std::move(d)), vocab_(std::move(v)) {
  cache_.resize(dfa_->states());
}

token_mask token_automaton::compute(int32_t state) const {
  const vocabulary& v = *vocab_;
  token_mask mask((v.size() + 63) / 64, 0);
  auto set = [&](token_id id) { mask[size_t(id) / 64] |= uint64_t{1} << (size_t(id) % 64); };
  const size_t n = v.byte_.size();
  std::vector<int32_t> at(n);  // DFA state after node i's bytes
  for (size_t i = 0; i < n;) {
    const int32_t from = v.parent_[i] < 0 ? state : at[size_t(v.parent_[i])];
    const int32_t s = dfa_->step(from, v.byte_[i]);
    if (s == dfa::dead) {
      i = size_t(v.end_[i]);  // nothing below can be allowed either
      continue;
    }
    at[i] = s;
    for (uint32_t k = v.tok_begin_[i]; k < v.tok_begin_[i + 1]; ++k)
      set(v.tokens_[k]);
    ++i;
  }
  if (dfa_->accepting[size_t(state)] && v.eos_ >= 0 && size_t(v.eos_) < v.size()) set(v.eos_);
  return mask;
}

std::span<const uint64_t> token_automaton::allowed(int32_t state) const {
  std::lock_guard lock(mu_);
  auto& slot = cache_[size_t(state)];
  if (!slot) slot = std::make_unique<const token_mask>(compute(state));
  return *slot;
}

int32_t token_automaton::advance(int32_t state, token_id id) const {
  if (state < 0 || id < 0 || size_t(id) >= vocab_->size()) return dfa::dead;
  if (id == vocab_->eos_) return accepting(state) ? state : dfa::dead;
  const std::string& p = vocab_->piece(id);
  if (p.empty()) return dfa::dead;
  return dfa_->walk(state, p);
}

int32_t token_automaton::replay(std::span<const token_id> ids) const {
  int32_t s = start();
  for (token_id id : ids) {
    s = advance(s, id);
    if (s == dfa::dead) return s;
  }
  return s;
}

size_t token_automaton::cached_states() const {
  std::lock_guard lock(mu_);
  return size_t(std::count_if(cache_.begin(), cache_.end(), [](const auto& p) { return !!p; }));
}

}  // namespace tokenmill::grammar
