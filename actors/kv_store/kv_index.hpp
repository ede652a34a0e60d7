#pragma once
/// The kv-store's global block index, free of CAF: which workers hold which chain hashes,
/// fed by stored/removed events, answering prefix-overlap queries.
///
/// Built to hold millions of blocks across a hundred workers and answer the overlap of a
/// 4k-token prompt in microseconds: one open-addressing table (linear probing) whose slot
/// is the chain hash followed by a bitset of the workers holding it (workers get dense
/// bit numbers). A query walks the prompt's chain once, ANDing bitsets, and stops at the
/// first block no remaining worker holds; it prefetches the slots a few blocks ahead, so
/// the table's cache misses overlap. Memory is one slot per distinct block (8 bytes of
/// hash + 8 per 64 workers) at a load factor between 3/8 and 3/4.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

class kv_index {
 public:
  /// `worker` now holds the blocks with these hashes (idempotent).
  void stored(worker_id worker, std::span<const uint64_t> hashes);
  /// `worker` no longer holds these blocks (unknown hashes are ignored).
  void removed(worker_id worker, std::span<const uint64_t> hashes);
  /// Forget everything a worker held (it left the cluster). Linear in the table's size.
  void drop_worker(worker_id worker);
  /// For each worker holding the first block of `chain`: how many leading blocks of the
  /// chain it holds without a gap. Sorted by worker id.
  std::vector<std::pair<worker_id, uint32_t>> overlap(std::span<const uint64_t> chain) const;
  /// The workers holding every block of `hashes` (a cached chunk: issue 17), sorted by
  /// worker id. Empty for no hashes. Stops at the first block no remaining worker holds.
  std::vector<worker_id> holding_all(std::span<const uint64_t> hashes) const;
  /// Whether `worker` holds the block with hash `h`.
  bool holds(worker_id worker, uint64_t h) const;
  /// Number of (hash, worker) entries.
  size_t entries() const { return entries_; }
  /// Number of distinct hashes.
  size_t blocks() const { return blocks_ + (zero_.present ? 1 : 0); }
  /// Workers holding at least one block.
  size_t workers() const { return slot_of_.size(); }
  /// Bytes the index uses (table, worker numbering), for memory per block.
  size_t memory_bytes() const;

 private:
  /// Slot layout in table_: [hash][bits word 0]...[bits word words_-1]; hash 0 marks an
  /// empty slot (a real hash 0 lives in zero_).
  size_t stride() const { return 1 + words_; }
  size_t home(uint64_t h) const {
    return static_cast<size_t>((h * 0x9E3779B97F4A7C15ull) >> shift_);
  }
  /// The bits of `h`, or nullptr.
  const uint64_t* find(uint64_t h) const;
  uint64_t* find(uint64_t h) { return const_cast<uint64_t*>(std::as_const(*this).find(h)); }
  /// The bits of `h`, inserted (all zero) when absent.
  uint64_t* find_or_insert(uint64_t h);
  /// Removes the slot at index `i` (backward-shift deletion).
  void erase_at(size_t i);
  /// Rebuilds the table with `capacity` slots (a power of two) and `words` bitset words,
  /// dropping blocks no worker holds.
  void rebuild(size_t capacity, size_t words);
  /// The worker's bit number, assigned when `create` (widening the bitsets if needed).
  std::optional<uint32_t> slot(worker_id worker) const;
  uint32_t slot_or_assign(worker_id worker);
  void release_slot(worker_id worker);
  /// Counts the blocks a worker holds, dropping its bit number at zero.
  void count(worker_id worker, uint32_t bit, int64_t delta);

  size_t words_ = 1;     ///< bitset words per slot (64 workers each)
  size_t capacity_ = 0;  ///< slots (power of two), 0 before the first insert
  unsigned shift_ = 64;  ///< 64 - log2(capacity_)
  std::vector<uint64_t> table_;
  size_t blocks_ = 0;   ///< occupied slots of table_
  size_t entries_ = 0;  ///< set bits, zero_ included
  struct {
    bool present = false;
    std::vector<uint64_t> bits;
  } zero_;
  std::unordered_map<worker_id, uint32_t> slot_of_;
  std::vector<worker_id> worker_of_;  ///< by bit number
  std::vector<uint64_t> held_;        ///< blocks held, by bit number
  std::vector<uint32_t> free_;        ///< bit numbers to reuse
};

}  // namespace tokenmill
