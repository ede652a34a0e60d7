#include "engine/block_pool.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <stdexcept>

namespace tokenmill {

void block_pool::aligned_free::operator()(std::byte* p) const {
  std::free(p);
}

block_pool::block_pool(const kv_layout& layout, uint32_t num_blocks)
    : layout_(layout), block_bytes_(layout.block_bytes()), total_(num_blocks) {
  if (auto err = layout.validate(); !err.empty()) throw std::invalid_argument(err);
  if (num_blocks == 0) throw std::invalid_argument("a KV pool needs at least one block");
  size_t bytes = block_bytes_ * num_blocks;
  size_t rounded = (bytes + 4095) / 4096 * 4096;
  auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, rounded));
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  memory_.reset(p);
  in_use_.assign(num_blocks, 0);
  free_list_.reserve(num_blocks);
  // Ascending order is already a valid min-heap.
  for (uint32_t i = 0; i < num_blocks; ++i)
    free_list_.push_back(i);
}

std::optional<std::vector<block_id>> block_pool::allocate(uint32_t n) {
  if (n > free_list_.size()) return std::nullopt;
  std::vector<block_id> out;
  out.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    std::pop_heap(free_list_.begin(), free_list_.end(), std::greater<>{});
    block_id b = free_list_.back();
    free_list_.pop_back();
    in_use_[b] = 1;
    out.push_back(b);
  }
  used_ += n;
  return out;
}

bool block_pool::release(std::span<const block_id> blocks) {
  // Validate everything first so that a bad call changes nothing.
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i] >= total_ || !in_use_[blocks[i]]) return false;
    for (size_t j = 0; j < i; ++j)
      if (blocks[j] == blocks[i]) return false;
  }
  for (auto b : blocks) {
    in_use_[b] = 0;
    free_list_.push_back(b);
    std::push_heap(free_list_.begin(), free_list_.end(), std::greater<>{});
  }
  used_ -= static_cast<uint32_t>(blocks.size());
  return true;
}

uint64_t block_checksum(const block_pool& pool, block_id b) {
  return XXH3_64bits(pool.block(b), pool.block_bytes());
}

}  // namespace tokenmill
