#include "actors/kv_store/kv_index.hpp"

#include <algorithm>

namespace tokenmill {

void kv_index::stored(worker_id worker, std::span<const uint64_t> hashes) {
  for (auto h : hashes) {
    auto& holders = index_[h];
    if (std::find(holders.begin(), holders.end(), worker) == holders.end())
      holders.push_back(worker);
  }
}

void kv_index::removed(worker_id worker, std::span<const uint64_t> hashes) {
  for (auto h : hashes) {
    auto it = index_.find(h);
    if (it == index_.end()) continue;
    auto& holders = it->second;
    holders.erase(std::remove(holders.begin(), holders.end(), worker), holders.end());
    if (holders.empty()) index_.erase(it);
  }
}

void kv_index::drop_worker(worker_id worker) {
  for (auto it = index_.begin(); it != index_.end();) {
    auto& holders = it->second;
    holders.erase(std::remove(holders.begin(), holders.end(), worker), holders.end());
    it = holders.empty() ? index_.erase(it) : std::next(it);
  }
}

std::vector<std::pair<worker_id, uint32_t>> kv_index::overlap(
    std::span<const uint64_t> chain) const {
  std::vector<std::pair<worker_id, uint32_t>> out;
  if (chain.empty()) return out;
  auto first = index_.find(chain[0]);
  if (first == index_.end()) return out;
  for (auto w : first->second) {
    uint32_t n = 1;
    while (n < chain.size()) {
      auto it = index_.find(chain[n]);
      if (it == index_.end() ||
          std::find(it->second.begin(), it->second.end(), w) == it->second.end())
        break;
      ++n;
    }
    out.emplace_back(w, n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

size_t kv_index::entries() const {
  size_t n = 0;
  for (const auto& [h, holders] : index_)
    n += holders.size();
  return n;
}

}  // namespace tokenmill
