#pragma once
/// A worker's KV pool: one buffer of fixed-size blocks, registered once with the KV
/// transport. Allocation hands out block indices; the pool never moves memory. The bytes
/// live in host memory (page-aligned) unless the engine supplies other memory (the CUDA
/// engine's device memory, engine::allocate_kv_memory).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "common/ids.hpp"
#include "common/pool_memory.hpp"
#include "engine/kv_layout.hpp"

namespace tokenmill {

class block_pool {
 public:
  /// `memory` holds at least num_blocks * block_bytes; nullptr: zeroed host memory.
  block_pool(const kv_layout& layout, uint32_t num_blocks,
             std::unique_ptr<pool_memory> memory = nullptr);

  /// Takes `n` free blocks (lowest indices first), or nothing when fewer are free.
  std::optional<std::vector<block_id>> allocate(uint32_t n);
  /// Returns blocks to the pool. False (and nothing changes) when any id is out of range
  /// or not allocated — a double free is a bug the caller must hear about.
  bool release(std::span<const block_id> blocks);

  /// A block's address: dereferenceable only in a host pool (host_memory()).
  std::byte* block(block_id b) { return base_ + size_t{b} * block_bytes_; }
  const std::byte* block(block_id b) const { return base_ + size_t{b} * block_bytes_; }
  /// The whole pool's address range.
  std::span<std::byte> memory() { return {base_, size_t{total_} * block_bytes_}; }
  std::span<const std::byte> memory() const { return {base_, size_t{total_} * block_bytes_}; }
  /// The memory behind the pool, for transports and for copies out of device pools.
  pool_memory& storage() { return *storage_; }
  const pool_memory& storage() const { return *storage_; }
  bool host_memory() const { return storage_->kind() == memory_kind::host; }

  const kv_layout& layout() const { return layout_; }
  size_t block_bytes() const { return block_bytes_; }
  uint32_t total() const { return total_; }
  uint32_t used() const { return used_; }
  uint32_t free() const { return total_ - used_; }
  bool in_use(block_id b) const { return b < total_ && in_use_[b]; }

 private:
  kv_layout layout_;
  size_t block_bytes_;
  uint32_t total_;
  uint32_t used_ = 0;
  std::unique_ptr<pool_memory> storage_;
  std::byte* base_ = nullptr;
  std::vector<uint8_t> in_use_;
  std::vector<block_id> free_list_;  ///< min-heap: the lowest free id is handed out first
};

/// xxh3-64 checksum of one block's bytes, used to verify transfers end to end. A device
/// pool's block is copied to the host first.
uint64_t block_checksum(const block_pool& pool, block_id b);

}  // namespace tokenmill
