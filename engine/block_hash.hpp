#pragma once
/// Block hash chain (DESIGN.md §4): h_i = H(h_{i-1}, tokens of block i), over full blocks
/// only. Equal hashes at index i mean equal token prefixes of (i+1) blocks, which is what
/// the kv-store's prefix index is keyed by.
#include <cstdint>
#include <span>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

/// Chain hashes of the full blocks of `tokens` (a trailing partial block has none).
std::vector<uint64_t> block_hashes(std::span<const token_id> tokens, uint32_t block_tokens,
                                   uint64_t seed = 0);

}  // namespace tokenmill
