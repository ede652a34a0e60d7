#include "engine/block_hash.hpp"

#include <xxhash.h>

#include <algorithm>

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

std::vector<uint64_t> chunk_block_hashes(std::span<const token_id> chunk, uint32_t block_tokens,
                                         uint32_t base_position) {
  std::vector<uint64_t> out;
  if (block_tokens == 0 || chunk.empty()) return out;
  struct {
    char domain[8] = {'t', 'm', 'c', 'h', 'u', 'n', 'k', '1'};
    uint64_t tokens;
    uint64_t base;
  } head{.tokens = chunk.size(), .base = base_position};
  uint64_t prev = XXH3_64bits(&head, sizeof(head));
  out.reserve((chunk.size() + block_tokens - 1) / block_tokens);
  for (size_t b = 0; b < chunk.size(); b += block_tokens) {
    const size_t len = std::min<size_t>(block_tokens, chunk.size() - b);
    prev = XXH3_64bits_withSeed(chunk.data() + b, len * sizeof(token_id), prev);
    out.push_back(prev);
  }
  return out;
}

}  // namespace tokenmill
