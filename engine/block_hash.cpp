#include "engine/block_hash.hpp"

#include <xxhash.h>

namespace tokenmill {

std::vector<uint64_t> block_hashes(std::span<const token_id> tokens, uint32_t block_tokens,
                                   uint64_t seed) {
  std::vector<uint64_t> out;
  if (block_tokens == 0) return out;
  size_t full = tokens.size() / block_tokens;
  out.reserve(full);
  uint64_t prev = seed;
  for (size_t i = 0; i < full; ++i) {
    prev = XXH3_64bits_withSeed(tokens.data() + i * block_tokens, block_tokens * sizeof(token_id),
                                prev);
    out.push_back(prev);
  }
  return out;
}

}  // namespace tokenmill
