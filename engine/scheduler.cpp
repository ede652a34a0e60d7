#include "engine/scheduler.hpp"

#include <algorithm>

namespace tokenmill {

std::vector<planned_chunk> plan_prefill_batch(const std::deque<prefill_progress>& queue,
                                              uint32_t token_budget, uint32_t max_seqs) {
  std::vector<planned_chunk> out;
  uint32_t left = token_budget;
  for (const auto& job : queue) {
    if (left == 0 || out.size() >= max_seqs) break;
    if (job.done >= job.total) continue;
    uint32_t n = std::min(left, job.total - job.done);
    out.push_back(planned_chunk{job.key, job.done, job.done + n});
    left -= n;
  }
  return out;
}

uint32_t decode_admissions(uint32_t running, uint32_t waiting, uint32_t max_batch) {
  if (running >= max_batch) return 0;
  return std::min(waiting, max_batch - running);
}

uint32_t blocks_to_reserve(uint32_t prompt_tokens, uint32_t max_tokens, uint32_t block_tokens) {
  if (block_tokens == 0) return 0;
  uint64_t tokens = uint64_t{prompt_tokens} + max_tokens;
  return static_cast<uint32_t>((tokens + block_tokens - 1) / block_tokens);
}

}  // namespace tokenmill
