#include "engine/kv_cache.hpp"

#include <algorithm>
#include <utility>

namespace tokenmill {

uint32_t kv_cache::cached_prefix(std::span<const uint64_t> chain) const {
  uint32_t n = 0;
  while (n < chain.size() && by_hash_.count(chain[n]) != 0)
    ++n;
  return n;
}

std::vector<block_id> kv_cache::acquire_prefix(std::span<const uint64_t> chain,
                                               uint32_t max_blocks) {
  std::vector<block_id> out;
  lookup_blocks_ += std::min<uint64_t>(chain.size(), max_blocks);
  for (size_t i = 0; i < chain.size() && out.size() < max_blocks; ++i) {
    auto it = by_hash_.find(chain[i]);
    if (it == by_hash_.end()) {
      if (!tier_ || !tier_->where(chain[i])) break;
      auto fresh = allocate(1);
      if (!fresh) break;
      if (!tier_->onboard(chain[i], pool_, (*fresh)[0])) {
        release(*fresh);
        break;
      }
      commit((*fresh)[0], chain[i]);
      ++onboarded_blocks_;
      out.push_back((*fresh)[0]);
      continue;
    }
    auto& c = it->second;
    if (c.in_lru) {
      lru_.erase(c.lru);
      c.in_lru = false;
    }
    if (refs_[c.block]++ == 0) ++referenced_;
    out.push_back(c.block);
  }
  hit_blocks_ += out.size();
  return out;
}

void kv_cache::evict_one() {
  auto b = lru_.front();
  lru_.pop_front();
  auto h = hash_of_.at(b);
  hash_of_.erase(b);
  by_hash_.erase(h);
  events_.stored.erase(std::remove(events_.stored.begin(), events_.stored.end(), h),
                       events_.stored.end());
  events_.removed.push_back(h);
  if (tier_) tier_->demote(pool_, b, h);
  block_id one[1] = {b};
  pool_.release(one);
}

std::optional<std::vector<block_id>> kv_cache::allocate(uint32_t n) {
  if (n > available()) return std::nullopt;
  while (pool_.free() < n)
    evict_one();
  auto blocks = pool_.allocate(n);
  if (!blocks) return std::nullopt;  // cannot happen: free() >= n
  for (auto b : *blocks)
    refs_[b] = 1;
  referenced_ += n;
  return blocks;
}

bool kv_cache::release(std::span<const block_id> blocks) {
  // Validate first so that a bad list changes nothing. Counting repeats makes releasing
  // one block twice in a list need two references.
  std::unordered_map<block_id, uint32_t> want;
  for (auto b : blocks) {
    if (b >= refs_.size()) return false;
    if (++want[b] > refs_[b]) return false;
  }
  for (auto bi = blocks.rbegin(); bi != blocks.rend(); ++bi) {
    const block_id b = *bi;
    if (--refs_[b] != 0) continue;
    --referenced_;
    if (auto it = hash_of_.find(b); it != hash_of_.end()) {
      auto& c = by_hash_.at(it->second);
      c.lru = lru_.insert(lru_.end(), b);
      c.in_lru = true;
    } else {
      block_id one[1] = {b};
      pool_.release(one);
    }
  }
  return true;
}

kv_cache::events kv_cache::take_events() {
  auto ev = std::exchange(events_, {});
  if (tier_) ev.tier = tier_->take_events();
  return ev;
}

void kv_cache::commit(block_id b, uint64_t hash) {
  if (b >= refs_.size() || refs_[b] == 0) return;
  if (hash_of_.count(b) != 0 || by_hash_.count(hash) != 0) return;
  hash_of_.emplace(b, hash);
  by_hash_.emplace(hash, cached_block{b, {}, false});
  events_.stored.push_back(hash);
}

}  // namespace tokenmill
