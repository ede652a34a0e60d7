#pragma once
/// The kv-store's view of every worker's KV blocks by where they are (DESIGN.md §4): one
/// kv_index per level (pool, host tier, disk tier), fed by the workers' per-level events,
/// and the prefix overlap counted across levels, so the router's cost model can tell
/// blocks it only has to onboard (copy back) from blocks it must compute. No CAF here.
#include <cstdint>
#include <span>
#include <vector>

#include "actors/kv_store/kv_index.hpp"
#include "common/ids.hpp"
#include "common/kv_tier_level.hpp"

namespace tokenmill {

/// One worker's leading run of a prompt's blocks held in any level.
struct tiered_overlap {
  worker_id worker = 0;
  uint32_t blocks = 0;       ///< leading blocks held, in any level, without a gap
  uint32_t host_blocks = 0;  ///< of those, in the host tier only
  uint32_t disk_blocks = 0;  ///< of those, in the disk tier only
  /// Indices of the chunks asked about (overlap's `chunks`) it holds whole in its pool,
  /// ascending.
  std::vector<uint32_t> chunks{};
};

class tiered_index {
 public:
  /// Applies a worker's event for one level. Levels other than pool/host/disk are refused
  /// (false, nothing changes): the event came from a newer or broken peer.
  bool apply(worker_id worker, bool stored, std::span<const uint64_t> hashes, uint8_t level);
  /// Forgets everything a worker held, in every level.
  void drop_worker(worker_id worker);
  /// For each worker holding the first block of `chain` in some level: the leading run it
  /// holds across levels (a block in the pool counts there even if a tier has a copy).
  /// Sorted by worker id. Without tiered blocks this is the pool index's own overlap.
  std::vector<tiered_overlap> overlap(std::span<const uint64_t> chain) const;
  /// As overlap(chain), and which of a segmented prompt's `chunks` (each a chunk's
  /// chunk_block_hashes, engine/block_hash.hpp) every worker holds whole: the router scores
  /// chunk hits beside prefix hits (issue 17). A worker holding a chunk but no leading block
  /// appears with blocks = 0. Chunks count in the pool only: a worker looks a chunk up in its
  /// cache, and a chunk partly in the second tier is not credited (the router does not price
  /// its onboarding).
  std::vector<tiered_overlap> overlap(std::span<const uint64_t> chain,
                                      std::span<const std::vector<uint64_t>> chunks) const;
  const kv_index& level(kv_tier_level t) const { return levels_[static_cast<size_t>(t)]; }

 private:
  kv_index levels_[3];
};

}  // namespace tokenmill
