#include "actors/prefill/prefill_policy.hpp"

#include <fmt/format.h>

#include "actors/prefix_reuse.hpp"

namespace tokenmill {

std::optional<error_info> check_prefill_job(const prefill_job_shape& job) {
  // The decode side may skip cached leading blocks, never the last prompt token's.
  const bool skip_ok =
      job.prompt_tokens > 0 &&
      job.skip_blocks <= reusable_prefix_blocks(job.prompt_tokens, job.block_tokens);
  const uint32_t need = job.prompt_blocks;
  if (job.prompt_tokens == 0 || !skip_ok || job.dst_blocks != need - job.skip_blocks ||
      job.dst_block_bytes != job.local_block_bytes)
    return error_info{
        errc::invalid_request,
        fmt::format("prefill job for {} tokens skips {} and names {} destination "
                    "blocks of {} B (expected {} of {} B)",
                    job.prompt_tokens, job.skip_blocks, job.dst_blocks, job.dst_block_bytes,
                    skip_ok ? need - job.skip_blocks : need, job.local_block_bytes)};
  if (need > job.pool_blocks)
    return error_info{
        errc::out_of_blocks,
        fmt::format("prompt needs {} KV blocks; the prefill pool has {}", need, job.pool_blocks)};
  return std::nullopt;
}

uint32_t complete_blocks(uint32_t done, uint32_t prompt_tokens, uint32_t prompt_blocks,
                         uint32_t block_tokens) {
  if (done == prompt_tokens) return prompt_blocks;
  return block_tokens == 0 ? 0 : done / block_tokens;
}

std::optional<block_transfer> next_transfer(uint32_t complete, uint32_t blocks_sent,
                                            uint32_t skip_blocks) {
  if (complete <= blocks_sent) return std::nullopt;
  return block_transfer{blocks_sent, complete, blocks_sent - skip_blocks, complete - skip_blocks};
}

bool hand_back_on_drain(const job_progress& j) {
  return !j.on_engine && !j.computed && j.done <= j.first_to_compute && j.writes_pending == 0 &&
         j.blocks_sent <= j.skip_blocks;
}

}  // namespace tokenmill
