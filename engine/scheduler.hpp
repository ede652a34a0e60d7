#pragma once
/// Batching policies of the workers (STYLE.md §2: no CAF here, tested as plain functions).
#include <cstdint>
#include <deque>
#include <vector>

namespace tokenmill {

/// A prompt waiting for (more) prefill: `done` of `total` tokens are computed.
struct prefill_progress {
  uint64_t key = 0;  ///< the worker's handle for the job
  uint32_t total = 0;
  uint32_t done = 0;
};

/// One chunk of a planned prefill batch: positions [begin, end) of job `key`.
struct planned_chunk {
  uint64_t key = 0;
  uint32_t begin = 0;
  uint32_t end = 0;
};

/// Chunked prefill, first come first served: fills up to `token_budget` tokens with the
/// queue's jobs in order, splitting the job that does not fit (its rest stays first in
/// line for the next batch) and taking at most `max_seqs` jobs. The queue is not changed.
std::vector<planned_chunk> plan_prefill_batch(const std::deque<prefill_progress>& queue,
                                              uint32_t token_budget, uint32_t max_seqs);

/// How many of `waiting` sequences may join a running batch of `running` sequences capped
/// at `max_batch`. Continuous batching: sequences join and leave between steps.
uint32_t decode_admissions(uint32_t running, uint32_t waiting, uint32_t max_batch);

/// Blocks a decode worker reserves for a request: the prompt plus every token it may
/// generate, so a running sequence never runs out of KV mid-stream.
uint32_t blocks_to_reserve(uint32_t prompt_tokens, uint32_t max_tokens, uint32_t block_tokens);

}  // namespace tokenmill
