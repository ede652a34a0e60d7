#include "engine/block_pool.hpp"

#include <fmt/format.h>

#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>

#include "engine/engine.hpp"

namespace tokenmill {

block_pool::block_pool(const kv_layout& layout, uint32_t num_blocks,
                       std::unique_ptr<pool_memory> memory)
    : layout_(layout), block_bytes_(layout.block_bytes()), total_(num_blocks) {
  if (auto r = layout.validate(); !r) throw std::invalid_argument(r.error().message);
  if (num_blocks == 0) throw std::invalid_argument("a KV pool needs at least one block");
  size_t bytes = block_bytes_ * num_blocks;
  storage_ = memory ? std::move(memory) : make_host_memory(bytes);
  if (storage_->bytes().size() < bytes)
    throw std::invalid_argument("KV pool memory holds " + std::to_string(storage_->bytes().size()) +
                                " bytes, " + std::to_string(num_blocks) + " blocks need " +
                                std::to_string(bytes));
  base_ = storage_->bytes().data();
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
  if (pool.host_memory()) return XXH3_64bits(pool.block(b), pool.block_bytes());
  thread_local std::vector<std::byte> staged;
  staged.resize(pool.block_bytes());
  pool.storage().copy_out(size_t{b} * pool.block_bytes(), staged.data(), staged.size());
  return XXH3_64bits(staged.data(), staged.size());
}

result<void> check_sequence(const block_pool& pool, const kv_layout& layout, uint32_t vocab,
                            std::span<const token_id> tokens, uint32_t begin, uint32_t end,
                            std::span<const block_id> blocks) {
  auto bad = [](std::string what) { return error_info{errc::invalid_request, std::move(what)}; };
  for (uint32_t i = begin; i < end; ++i)
    if (tokens[i] < 0 || static_cast<uint32_t>(tokens[i]) >= vocab)
      return bad(fmt::format("token id {} at position {} is outside the vocabulary [0, {})",
                             tokens[i], i, vocab));
  uint32_t need = layout.blocks_for(end);
  if (blocks.size() < need)
    return bad(fmt::format("position {} needs {} blocks of {} tokens, the block table has {}",
                           end - 1, need, layout.block_tokens, blocks.size()));
  for (uint32_t b = 0; b < need; ++b)
    if (blocks[b] >= pool.total())
      return bad(
          fmt::format("block id {} is outside the pool ({} blocks)", blocks[b], pool.total()));
  return {};
}

}  // namespace tokenmill
