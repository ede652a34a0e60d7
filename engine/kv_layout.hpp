#pragma once
/// Block-major KV cache layout (DESIGN.md §4): one block holds `block_tokens` tokens for
/// all layers, laid out `[layer][K|V][kv_head][token][head_dim]` in the engine's dtype,
/// so that one block is one contiguous region and one transfer operation.
#include <cstddef>
#include <cstdint>

#include "common/result.hpp"

namespace tokenmill {

struct kv_layout {
  uint32_t layers = 2;
  uint32_t kv_heads = 2;
  uint32_t head_dim = 64;
  uint32_t block_tokens = 16;
  uint32_t dtype_bytes = 2;  ///< 2 for f16/bf16, 4 for f32

  /// Bytes of one block.
  size_t block_bytes() const;
  /// Byte offset, inside a block, of the head_dim vector of (layer, K=0|V=1, head, token slot).
  size_t offset(uint32_t layer, uint32_t kv, uint32_t head, uint32_t slot) const;
  /// Blocks needed to hold `tokens` tokens.
  uint32_t blocks_for(uint32_t tokens) const;
  /// Success when every dimension is positive and dtype_bytes is 2 or 4, else
  /// errc::invalid_request saying what is wrong.
  result<void> validate() const;
};

}  // namespace tokenmill
