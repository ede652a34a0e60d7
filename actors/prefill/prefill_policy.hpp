#pragma once
/// The prefill worker's decisions, free of CAF (STYLE.md §2): whether a job can be served,
/// and which of its blocks are complete and go to the decode worker next. prefill_actor.cpp
/// wires them.
#include <cstddef>
#include <cstdint>
#include <optional>

#include "common/errors.hpp"

namespace tokenmill {

/// A prefill job's shape as it arrived, and the worker it arrived at.
struct prefill_job_shape {
  uint32_t prompt_tokens = 0;
  uint32_t prompt_blocks = 0;      ///< blocks the prompt fills (last one may be partial)
  uint32_t block_tokens = 0;       ///< tokens per block
  uint32_t skip_blocks = 0;        ///< leading blocks the decode worker has cached already
  size_t dst_blocks = 0;           ///< destination blocks the job names
  uint64_t dst_block_bytes = 0;    ///< block size of the decode worker's pool (bytes)
  uint64_t local_block_bytes = 0;  ///< block size of this worker's pool (bytes)
  uint32_t pool_blocks = 0;        ///< this worker's pool size (blocks)
};

/// Whether a job can be served. errc::invalid_request when it is malformed: an empty
/// prompt, a skip that would cover the last prompt token's block (reusable_prefix_blocks),
/// a destination block count other than prompt_blocks - skip_blocks, or a block size other
/// than ours; errc::out_of_blocks when the prompt needs more blocks than the pool has.
std::optional<error_info> check_prefill_job(const prefill_job_shape& job);

/// Leading prompt blocks whose KV is complete once `done` of `prompt_tokens` tokens are
/// computed: every full block, and the last (partial) one only when the whole prompt is.
uint32_t complete_blocks(uint32_t done, uint32_t prompt_tokens, uint32_t prompt_blocks,
                         uint32_t block_tokens);

/// The blocks one transport write carries: local blocks [src_begin, src_end) of the job go
/// to its destination blocks [dst_begin, dst_end) (indices into the job's lists).
struct block_transfer {
  uint32_t src_begin = 0, src_end = 0;
  uint32_t dst_begin = 0, dst_end = 0;
};

/// The next write of a job with `complete` blocks complete, `blocks_sent` leading blocks
/// sent or skipped so far, and `skip_blocks` leading blocks the decode worker has (the job
/// names no destination for them); nothing when no new block is complete.
std::optional<block_transfer> next_transfer(uint32_t complete, uint32_t blocks_sent,
                                            uint32_t skip_blocks);

/// Where a prefill job stands when its worker starts a role change or a drain.
struct job_progress {
  bool on_engine = false;         ///< a chunk of it is being computed
  bool computed = false;          ///< every chunk computed
  uint32_t done = 0;              ///< prompt tokens computed or reused
  uint32_t first_to_compute = 0;  ///< `done` before its first chunk (after the cached prefix)
  uint32_t writes_pending = 0;    ///< transport writes not completed
  uint32_t blocks_sent = 0;       ///< leading blocks sent or skipped
  uint32_t skip_blocks = 0;       ///< leading blocks the decode worker has
};

/// Whether a job goes back to its decode worker (prefill_failed, errc::unavailable: the
/// router routes the request again) when the worker starts a role change or a drain:
/// nothing of it was computed or written, so another worker loses nothing by taking it,
/// and the change waits only for the jobs under way.
bool hand_back_on_drain(const job_progress& j);

}  // namespace tokenmill
