#pragma once
/// The KV cache manager of one worker (DESIGN.md §4): a block pool with reference counts
/// and a prefix cache keyed by block chain hash. A full block whose KV is written can be
/// committed under its chain hash; while any sequence references it, it is pinned; when
/// none does, it stays cached (matchable by later requests) until the pool needs the space,
/// and then the least recently used unreferenced block is evicted. Every block entering or
/// leaving the cache produces a stored/removed event for the kv-store's global index.
/// With a second tier attached (engine/kv_tier.hpp) an evicted block is copied there first,
/// and acquire_prefix copies it back into a pool block (onboards it) when a prefix reaches
/// it, so it is not recomputed; the tier's own events come with the cache's.
/// No CAF here (STYLE.md §2): the workers own one and forward its events.
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/ids.hpp"
#include "engine/block_pool.hpp"
#include "engine/kv_tier.hpp"

namespace tokenmill {

class kv_cache {
 public:
  /// Cache events since the last take_events(), in order.
  struct events {
    std::vector<uint64_t> stored;   ///< chain hashes newly cached
    std::vector<uint64_t> removed;  ///< chain hashes evicted
    kv_tier::events tier;           ///< the second tier's, when one is attached
    bool empty() const { return stored.empty() && removed.empty() && tier.empty(); }
  };

  explicit kv_cache(block_pool& pool) : pool_(pool), refs_(pool.total(), 0) {}

  /// From now on, evicted blocks go to `tier` and prefix hits onboard from it.
  void attach_tier(std::unique_ptr<kv_tier> tier) { tier_ = std::move(tier); }
  /// The attached tier, or nullptr.
  const kv_tier* tier() const { return tier_.get(); }

  /// Pins the longest run of cached blocks whose hashes equal the leading `chain` hashes,
  /// at most `max_blocks`, and returns them in order (one reference each). A block of the
  /// run that is in the second tier is onboarded into a freshly allocated block (which is
  /// then cached like any other); the run ends where a block is in neither, where no block
  /// can be allocated for it, or where its tier copy fails its checksum.
  std::vector<block_id> acquire_prefix(std::span<const uint64_t> chain, uint32_t max_blocks);
  /// How many leading blocks of `chain` are cached, without pinning them.
  uint32_t cached_prefix(std::span<const uint64_t> chain) const;
  /// `n` blocks with one reference each, evicting unreferenced cached blocks (least recently
  /// used first) when the pool has too few free ones; nothing when even that is not enough.
  std::optional<std::vector<block_id>> allocate(uint32_t n);
  /// Drops one reference from each block. Unreferenced cached blocks stay cached (the list's
  /// later blocks become evictable before its earlier ones: a prefix is only useful from its
  /// start); others go back to the pool. False (and nothing changes) on an unknown or unreferenced
  /// block.
  bool release(std::span<const block_id> blocks);
  /// Records that referenced block `b` holds the full block with chain hash `hash`, so later
  /// requests can reuse it. A no-op when the hash is already cached (in this or another
  /// block: `b` then stays private) or when `b` is already committed.
  void commit(block_id b, uint64_t hash);
  /// The cache's events since the last call.
  events take_events();

  /// Blocks referenced by at least one sequence.
  uint32_t referenced() const { return referenced_; }
  /// Blocks holding a cached hash (referenced or not).
  uint32_t cached() const { return static_cast<uint32_t>(by_hash_.size()); }
  /// Blocks an allocation can get: free in the pool plus evictable.
  uint32_t available() const { return pool_.free() + static_cast<uint32_t>(lru_.size()); }
  uint32_t total() const { return pool_.total(); }
  uint32_t refs(block_id b) const { return b < refs_.size() ? refs_[b] : 0; }
  /// Blocks handed out by acquire_prefix (prefill skipped for each), since creation.
  uint64_t hits() const { return hit_blocks_; }
  /// Blocks asked for by acquire_prefix (the hit rate's denominator), since creation.
  uint64_t lookups() const { return lookup_blocks_; }
  /// Of hits(), blocks onboarded from the second tier.
  uint64_t onboarded() const { return onboarded_blocks_; }
  block_pool& pool() { return pool_; }
  const block_pool& pool() const { return pool_; }

 private:
  struct cached_block {
    block_id block = 0;
    std::list<block_id>::iterator lru;  ///< valid while unreferenced
    bool in_lru = false;
  };
  void evict_one();

  block_pool& pool_;
  std::vector<uint32_t> refs_;
  std::unordered_map<uint64_t, cached_block> by_hash_;
  std::unordered_map<block_id, uint64_t> hash_of_;  ///< committed blocks
  std::list<block_id> lru_;                         ///< unreferenced cached blocks, oldest first
  uint32_t referenced_ = 0;
  uint64_t hit_blocks_ = 0;
  uint64_t lookup_blocks_ = 0;
  uint64_t onboarded_blocks_ = 0;
  events events_;
  std::unique_ptr<kv_tier> tier_;
};

}  // namespace tokenmill
