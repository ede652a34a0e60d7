#pragma once
/// How one machine is shared out when the user does not say (issue 21 items 4 and 5): the
/// workers of `tokenmill serve` and their share of the cores, and the KV pools from a memory
/// budget (`--kv-memory`, manifest `defaults.kv_memory`) with a default that fits the machine.
/// CAF-free decisions, tested as plain functions; embedded_cluster and node apply them.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace tokenmill {

/// Parses a memory size: a positive number (fractions allowed) with an optional unit.
/// `B` or none: bytes; `K`, `M`, `G`, `T` and `KiB`, `MiB`, `GiB`, `TiB`: powers of 1024;
/// `KB`, `MB`, `GB`, `TB`: powers of 1000. Units are case-insensitive ("2g", "512MiB",
/// "1.5GB"). Errors (errc::invalid_request) quote the text and say what is expected; the
/// caller prefixes where it came from.
result<uint64_t> parse_memory_size(std::string_view text);

/// What parse_memory_size accepts, for "expected ..." in messages.
inline constexpr std::string_view memory_size_expected =
    "a positive number with an optional unit: B, K/KiB, M/MiB, G/GiB, T/TiB (powers of 1024) "
    "or KB/MB/GB/TB (powers of 1000), e.g. 512M or 2GiB";

/// "1.50 GiB", "192.0 MiB", "512 B": a size for messages.
std::string format_memory_size(uint64_t bytes);

/// Prompt tokens per engine call when a decode worker prefills between its decode steps
/// and the user set no chunk: every running stream waits for the chunk, so it bounds the
/// token gap a new prompt causes (~160 ms at the 125m preset's ~800 prefill tok/s on 2
/// cores, against ~320 ms for a 256-token prompt in one call; llama-server batches such a
/// prompt whole with the other slots' tokens). Prefill per token is no slower at 128 than
/// at 512 there (issue 21's figures: 758-798 vs 584-609 tok/s).
inline constexpr uint32_t aggregated_prefill_chunk = 128;

/// `serve`'s workers and compute threads per worker.
struct serve_topology {
  uint32_t prefill_workers = 0;
  uint32_t decode_workers = 1;
  uint32_t threads = 1;  ///< compute threads per worker, or of the shared pool
  /// The cpu workers share one pool of `threads` (cpu::thread_pool with a caller per
  /// worker): idle threads join whichever worker has work, decode steps first.
  bool shared_pool = false;
  uint32_t local_prefill_chunk = 0;  ///< decode workers' prefill chunk; 0: the configured one
};

/// The topology for a machine of `cores` hardware threads (0 = unknown: taken as 1): what
/// the user gave is kept, the rest chosen. Prefill workers: 1. (Running none below some
/// core count, so that a lone stream decodes on every core, was tried for issue 21: on the
/// shared 2-core VM it lost at concurrency 4 in output tok/s and p99 ITL and was not
/// measurably better at 1; it needs a measurement on an idle machine first.)
/// Shared pool: with the cpu engine (`host_compute`) and more than one worker, when
/// `shared_pool` says so; then `threads` is the pool's size (the user's count, else every
/// core), so a lone prompt prefills and a lone stream decodes on every core while prefill
/// and decode still run in their own workers. Unset means shared: on the idle 2-core VM
/// (125m f16, input 256, output 64, 4 interleaved rounds against own pools, steal < 0.1%)
/// it gave 1.3-2.1x the output tok/s at concurrency 1 with half the TTFT and two thirds of
/// the ITL p50, and at concurrency 4 1.03-1.16x the tok/s with TTFT p50 level or lower; ITL
/// p50 was within 7% either way and p99 mixed (0.88-1.37x). Loaded rounds (load 4-9) gave
/// 1.4-1.9x at 1 and 0.98-1.12x tok/s at 4 with ITL p99 median 1.12x. Not shared: threads
/// per worker, the user's count or the cores split evenly between the workers, at least 1.
/// Local prefill chunk: aggregated_prefill_chunk when there is no prefill worker, the
/// engine computes on these cores and the user gave no chunk (`chunk_given`), else 0.
serve_topology choose_topology(uint32_t cores, bool host_compute,
                               std::optional<uint32_t> prefill_workers,
                               std::optional<uint32_t> decode_workers,
                               std::optional<uint32_t> threads, bool chunk_given = false,
                               std::optional<bool> shared_pool = {});

/// What the KV pools of one process must serve, in the engine's KV layout.
struct kv_demand {
  uint64_t block_bytes = 0;    ///< one block (all layers, K and V), bytes
  uint32_t block_tokens = 16;  ///< tokens per block
  uint32_t max_context = 0;    ///< tokens of one sequence at most
  uint32_t prefill_workers = 0;
  uint32_t decode_workers = 0;
  uint32_t prefill_max_seqs = 16;  ///< prompts a prefill worker computes at once
  uint32_t decode_max_batch = 64;  ///< sequences a decode worker steps at once
  /// Pool sizes the user fixed per role (blocks per worker); the budget covers the rest.
  std::optional<uint32_t> prefill_blocks, decode_blocks;
};

/// Blocks per worker and where the numbers came from.
struct kv_pool_plan {
  uint32_t prefill_blocks = 0;  ///< per prefill worker
  uint32_t decode_blocks = 0;   ///< per decode worker
  uint64_t budget_bytes = 0;    ///< the budget split (given, or the default)
  bool default_budget = false;  ///< no budget was given
  /// One line for the log: the budget, blocks per worker, tokens they hold.
  std::string summary;
};

/// The KV memory used when no budget is given: what the workers can use at once (every
/// decode worker a full batch of full-context sequences, every prefill worker its
/// max_seqs full-context prompts), capped at a quarter of the memory the weights leave
/// (`physical_bytes` - `weight_bytes`), and never below one full-context sequence per
/// worker. Pages are touched as blocks are first used, so this is an upper bound of the
/// resident KV, not what a fresh server holds.
uint64_t default_kv_memory(const kv_demand& d, uint64_t physical_bytes, uint64_t weight_bytes);

/// Splits `budget` bytes (nullopt: default_kv_memory) into per-worker pools: workers whose
/// role has fixed blocks keep them, the rest share what remains in proportion to what they
/// can use at once (decode: max_batch sequences, prefill: max_seqs prompts). Errors
/// (errc::invalid_request) when the layout is empty, when the pools would take more than 80%
/// of `physical_bytes` (when known, non-zero), or when a given budget leaves a worker less
/// than one full-context sequence; the message names the budget, the block size and what
/// is needed.
result<kv_pool_plan> plan_kv_pools(const kv_demand& d, std::optional<uint64_t> budget,
                                   uint64_t physical_bytes, uint64_t weight_bytes);

/// This machine's physical memory (bytes; 0 when it cannot be read).
uint64_t physical_memory_bytes();

}  // namespace tokenmill
