#include "actors/kv_store/tiered_index.hpp"

#include <algorithm>

namespace tokenmill {

bool tiered_index::apply(worker_id worker, bool stored, std::span<const uint64_t> hashes,
                         uint8_t level) {
  if (level > static_cast<uint8_t>(kv_tier_level::disk)) return false;
  auto& idx = levels_[level];
  if (stored)
    idx.stored(worker, hashes);
  else
    idx.removed(worker, hashes);
  return true;
}

void tiered_index::drop_worker(worker_id worker) {
  for (auto& idx : levels_)
    idx.drop_worker(worker);
}

std::vector<tiered_overlap> tiered_index::overlap(std::span<const uint64_t> chain) const {
  const auto& pool = levels_[0];
  const auto& host = levels_[1];
  const auto& disk = levels_[2];
  std::vector<tiered_overlap> out;
  auto pool_runs = pool.overlap(chain);
  if (host.entries() == 0 && disk.entries() == 0) {
    for (auto [w, n] : pool_runs)
      out.push_back({w, n, 0, 0, {}});
    return out;
  }
  // Candidates: every worker holding the first block somewhere. Each continues its pool
  // run block by block through the levels (a few workers, a few lookups each).
  std::vector<worker_id> cands;
  for (const auto* idx : {&pool, &host, &disk})
    for (auto [w, n] : idx->overlap(chain.first(std::min<size_t>(chain.size(), 1))))
      cands.push_back(w);
  std::sort(cands.begin(), cands.end());
  cands.erase(std::unique(cands.begin(), cands.end()), cands.end());
  for (auto w : cands) {
    tiered_overlap o{w, 0, 0, 0, {}};
    auto it = std::lower_bound(pool_runs.begin(), pool_runs.end(), w,
                               [](const auto& p, worker_id v) { return p.first < v; });
    if (it != pool_runs.end() && it->first == w) o.blocks = it->second;
    while (o.blocks < chain.size()) {
      const uint64_t h = chain[o.blocks];
      if (pool.holds(w, h)) {
      } else if (host.holds(w, h)) {
        ++o.host_blocks;
      } else if (disk.holds(w, h)) {
        ++o.disk_blocks;
      } else {
        break;
      }
      ++o.blocks;
    }
    out.push_back(o);
  }
  return out;
}

std::vector<tiered_overlap> tiered_index::overlap(
    std::span<const uint64_t> chain, std::span<const std::vector<uint64_t>> chunks) const {
  auto out = overlap(chain);
  for (uint32_t c = 0; c < chunks.size(); ++c)
    for (auto w : levels_[0].holding_all(chunks[c])) {
      auto it = std::lower_bound(out.begin(), out.end(), w,
                                 [](const tiered_overlap& o, worker_id v) { return o.worker < v; });
      if (it == out.end() || it->worker != w) it = out.insert(it, tiered_overlap{w, 0, 0, 0, {}});
      it->chunks.push_back(c);
    }
  return out;
}

}  // namespace tokenmill
