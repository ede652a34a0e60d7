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

/// Hashes of a reusable chunk's blocks (issue 17): the chain of block_hashes over the chunk's
/// own tokens, so it does not depend on what precedes the chunk in a prompt, started from a
/// seed of the chunk domain, the chunk's length and `base_position` (the position its keys
/// are rotated at in the cache), so chunk hashes never equal prefix hashes of the same tokens
/// and chunks of different lengths never share blocks. Unlike block_hashes, a trailing
/// partial block has a hash too: a chunk is cached whole. Empty for no tokens or a zero block
/// size.
std::vector<uint64_t> chunk_block_hashes(std::span<const token_id> chunk, uint32_t block_tokens,
                                         uint32_t base_position = 0);

}  // namespace tokenmill
