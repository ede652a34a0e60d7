#pragma once
/// The kv-store's global block index, free of CAF: which workers hold which chain hashes,
/// fed by stored/removed events, answering prefix-overlap queries.
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

class kv_index {
 public:
  /// `worker` now holds the blocks with these hashes (idempotent).
  void stored(worker_id worker, std::span<const uint64_t> hashes);
  /// `worker` no longer holds these blocks (unknown hashes are ignored).
  void removed(worker_id worker, std::span<const uint64_t> hashes);
  /// Forget everything a worker held (it left the cluster).
  void drop_worker(worker_id worker);
  /// For each worker holding the first block of `chain`: how many leading blocks of the
  /// chain it holds without a gap. Sorted by worker id.
  std::vector<std::pair<worker_id, uint32_t>> overlap(std::span<const uint64_t> chain) const;
  /// Number of (hash, worker) entries.
  size_t entries() const;
  /// Number of distinct hashes.
  size_t blocks() const { return index_.size(); }

 private:
  std::unordered_map<uint64_t, std::vector<worker_id>> index_;
};

}  // namespace tokenmill
