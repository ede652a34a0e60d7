#include "engine/kv_layout.hpp"

#include "engine/detail/layout_match.hpp"

#include <fmt/format.h>

namespace tokenmill {

size_t kv_layout::block_bytes() const {
  return size_t{layers} * 2 * kv_heads * block_tokens * head_dim * dtype_bytes;
}

size_t kv_layout::offset(uint32_t layer, uint32_t kv, uint32_t head, uint32_t slot) const {
  size_t idx = ((size_t{layer} * 2 + kv) * kv_heads + head) * block_tokens + slot;
  return idx * head_dim * dtype_bytes;
}

uint32_t kv_layout::blocks_for(uint32_t tokens) const {
  // 64-bit sum: tokens + block_tokens - 1 wraps for prompts near 2^32; a zero block size
  // (an invalid layout) must not divide by zero.
  if (block_tokens == 0) return 0;
  return static_cast<uint32_t>((uint64_t{tokens} + block_tokens - 1) / block_tokens);
}

result<void> kv_layout::validate() const {
  if (layers == 0 || kv_heads == 0 || head_dim == 0 || block_tokens == 0)
    return error_info{errc::invalid_request,
                      fmt::format("kv layout has a zero dimension (layers={}, kv_heads={}, "
                                  "head_dim={}, block_tokens={})",
                                  layers, kv_heads, head_dim, block_tokens)};
  if (dtype_bytes != 2 && dtype_bytes != 4)
    return error_info{errc::invalid_request,
                      fmt::format("kv dtype must be 2 or 4 bytes, got {}", dtype_bytes)};
  return {};
}

namespace detail {

result<void> check_layout_match(const kv_layout& l, const kv_layout& e, std::string_view who) {
  if (l.layers != e.layers || l.kv_heads != e.kv_heads || l.head_dim != e.head_dim ||
      l.block_tokens != e.block_tokens || l.dtype_bytes != e.dtype_bytes)
    return error_info{
        errc::invalid_request,
        fmt::format("{}: block pool layout (layers={}, kv_heads={}, head_dim={}, "
                    "block_tokens={}, dtype_bytes={}) does not match the "
                    "engine's ({}, {}, {}, {}, {})",
                    who, l.layers, l.kv_heads, l.head_dim, l.block_tokens, l.dtype_bytes, e.layers,
                    e.kv_heads, e.head_dim, e.block_tokens, e.dtype_bytes)};
  return {};
}

}  // namespace detail
}  // namespace tokenmill
