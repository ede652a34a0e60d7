#include "actors/prefix_reuse.hpp"

namespace tokenmill {

uint32_t reusable_prefix_blocks(uint32_t prompt_tokens, uint32_t block_tokens) {
  if (prompt_tokens == 0 || block_tokens == 0) return 0;
  return (prompt_tokens - 1) / block_tokens;
}

uint32_t first_computed_token(uint32_t reused_blocks, uint32_t block_tokens) {
  return reused_blocks * block_tokens;
}

}  // namespace tokenmill
