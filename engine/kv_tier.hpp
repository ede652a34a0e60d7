#pragma once
/// The second KV tier (DESIGN.md §4): where a worker's pool puts blocks it evicts, so that a
/// later prefix hit copies them back ("onboards" them) instead of recomputing them. Two
/// levels, each bounded and least-recently-used: host memory (pinned when the pool is
/// device memory, pool_memory::make_host_staging) and, optionally, a file on local disk
/// (one per worker, mapped). A block evicted from the pool goes to the host level; the host
/// level's victim goes to disk; the disk level's victim is dropped. Every block carries the
/// xxh3 checksum the KV transport uses, taken when it left the pool and checked before it
/// goes back: a block that does not match is dropped and recomputed, never served.
/// No CAF here (STYLE.md §2): kv_cache owns one and reports its events with its own.
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/ids.hpp"
#include "common/kv_tier_level.hpp"
#include "common/pool_memory.hpp"
#include "common/result.hpp"
#include "engine/block_pool.hpp"

namespace tokenmill {

/// Bookkeeping of one bounded level: which chain hash sits in which slot, least recently
/// used first. Knows nothing about bytes, so it is tested as plain data.
class tier_lru {
 public:
  explicit tier_lru(uint32_t capacity);

  /// The result of put(): the hash's slot and the entry evicted to make room, if any (its
  /// slot is the one returned, so the caller moves its bytes out before writing).
  struct placed {
    uint32_t slot = 0;
    std::optional<uint64_t> evicted;
  };
  /// Puts `hash` in as the most recently used entry, evicting the least recently used one
  /// when full. A hash already held keeps its slot (and becomes most recently used).
  /// Nothing with capacity 0.
  std::optional<placed> put(uint64_t hash);
  /// The slot of `hash`, or nothing.
  std::optional<uint32_t> find(uint64_t hash) const;
  /// Removes `hash`, freeing its slot; its slot, or nothing when absent.
  std::optional<uint32_t> take(uint64_t hash);

  uint32_t size() const { return static_cast<uint32_t>(where_.size()); }
  uint32_t capacity() const { return capacity_; }

 private:
  struct entry {
    uint32_t slot;
    std::list<uint64_t>::iterator lru;
  };
  uint32_t capacity_;
  std::list<uint64_t> lru_;  ///< oldest first
  std::unordered_map<uint64_t, entry> where_;
  std::vector<uint32_t> free_;  ///< free slots, highest first (slot 0 is handed out first)
};

/// The sizes of a worker's second tier (manifest `kv_host_blocks`, `kv_disk_blocks`,
/// `kv_disk_dir`; serve --kv-host-blocks, --kv-disk-blocks, --kv-disk-dir). All 0: no tier,
/// an evicted block is gone (the default).
struct kv_tier_config {
  uint32_t host_blocks = 0;  ///< blocks in host memory
  uint32_t disk_blocks = 0;  ///< blocks in the disk file (needs host_blocks > 0)
  std::string disk_dir;      ///< where the file goes; empty: $TMPDIR or /tmp
  bool enabled() const { return host_blocks > 0; }
};

/// Counters of one level since the tier was made, for metrics.
struct kv_tier_stats {
  uint64_t hits = 0;          ///< blocks onboarded from this level
  uint64_t bytes_in = 0;      ///< bytes written into this level (demotions)
  uint64_t bytes_out = 0;     ///< bytes copied from this level back into the pool
  uint64_t evictions = 0;     ///< blocks pushed out of this level (to disk, or dropped)
  uint64_t bad_checksum = 0;  ///< blocks dropped because their bytes no longer matched
  uint32_t used = 0;          ///< blocks held now
  uint32_t capacity = 0;      ///< blocks it can hold
};

class kv_tier {
 public:
  /// A tier for blocks of `pool`: host memory from the pool's memory (pinned for device
  /// pools), a disk file in cfg.disk_dir named after `owner` when cfg.disk_blocks > 0 (it
  /// is unlinked at once, so nothing is left behind when the process goes). Errors:
  /// invalid_request for a config it cannot serve (disk without host, a directory where no
  /// file can be made), naming the field.
  static result<std::unique_ptr<kv_tier>> make(const block_pool& pool, const kv_tier_config& cfg,
                                               std::string_view owner);
  ~kv_tier();
  kv_tier(const kv_tier&) = delete;
  kv_tier& operator=(const kv_tier&) = delete;

  /// Level events since take_events(), per level, in the kv_cache's format.
  struct events {
    std::vector<uint64_t> host_stored, host_removed, disk_stored, disk_removed;
    bool empty() const {
      return host_stored.empty() && host_removed.empty() && disk_stored.empty() &&
             disk_removed.empty();
    }
  };

  /// Copies pool block `b` (chain hash `hash`) into the host level, moving the host level's
  /// victim to disk (or dropping it). A hash held already is refreshed.
  void demote(const block_pool& pool, block_id b, uint64_t hash);
  /// The level holding `hash`, or nothing.
  std::optional<kv_tier_level> where(uint64_t hash) const;
  /// Copies the block with `hash` into pool block `b` and removes it from the tier. False
  /// when the tier does not hold it, or when its checksum no longer matches (then it is
  /// dropped and `b` is left as it was).
  bool onboard(uint64_t hash, block_pool& pool, block_id b);
  events take_events();
  /// The counters of the host or disk level (used: blocks held now).
  kv_tier_stats stats(kv_tier_level t) const;
  size_t block_bytes() const { return block_bytes_; }
  bool has_disk() const { return disk_.capacity() > 0; }

 private:
  kv_tier(size_t block_bytes, uint32_t host_blocks, uint32_t disk_blocks);
  std::byte* host_slot(uint32_t s) { return host_mem_->bytes().data() + size_t{s} * block_bytes_; }
  std::byte* disk_slot(uint32_t s) { return disk_map_ + size_t{s} * block_bytes_; }
  /// Makes room in the host level for `hash` (moving its victim to disk); its slot.
  std::optional<uint32_t> place_host(uint64_t hash);

  size_t block_bytes_;
  tier_lru host_, disk_;
  std::unique_ptr<pool_memory> host_mem_;
  std::vector<uint64_t> host_sum_, disk_sum_;  ///< checksum by slot
  int disk_fd_ = -1;
  std::byte* disk_map_ = nullptr;
  size_t disk_map_bytes_ = 0;
  kv_tier_stats host_stats_, disk_stats_;
  events events_;
};

}  // namespace tokenmill
