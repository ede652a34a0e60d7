#pragma once
/// Timing one engine alone, no cluster: what `tokenmill bench-engine` and `tokenmill
/// profile` both measure (a prompt's prefill in chunks, a decode step over a batch), and
/// the facts about the machine both report beside it.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.hpp"
#include "common/ids.hpp"
#include "common/result.hpp"
#include "engine/engine.hpp"
#include "engine/model.hpp"
#include "grammar/token_automaton.hpp"

namespace tokenmill::app {

/// 1-minute load average, or -1 when unknown.
double loadavg_1min();
/// The CPU's model name from /proc/cpuinfo ("unknown" when it has none).
std::string cpu_model_name();
/// The machine's CPU time so far from /proc/stat's "cpu" line, in jiffies: {steal, total}
/// (total = user + nice + system + idle + iowait + irq + softirq + steal); {0, 0} when
/// unreadable. Steal is time the hypervisor gave this VM's CPUs to someone else.
std::pair<uint64_t, uint64_t> cpu_steal_jiffies();
/// CPUs this process may run on (what `nproc` prints).
uint32_t usable_cpus();
/// Bytes of memory available to new allocations (MemAvailable), 0 when unknown.
uint64_t available_memory_bytes();
/// CPU seconds this process has used (all threads, user + system).
double process_cpu_s();

/// Share of `threads` cores this process got between two points: CPU seconds / (wall
/// seconds x threads). Well below 1 means other processes took the cores.
struct cpu_share_meter {
  uint32_t threads;
  int64_t wall0 = now_ns();
  double cpu0 = process_cpu_s();
  double share() const;
};

/// Weight bytes one decode step reads: every linear weight plus the output head, as stored
/// (elem_bytes 0) or converted to elements of `elem_bytes` (the cuda engine's dtype).
uint64_t step_weight_bytes(const loaded_model& m, uint32_t elem_bytes = 0);

/// Deterministic prompt ids in [3, vocab) (past the usual special tokens).
std::vector<token_id> prompt_ids(uint32_t n, uint32_t vocab, uint64_t salt);

/// A timed engine operation: the median of the timed runs, over how many engine calls.
struct engine_timing {
  double median_s = 0;
  uint32_t calls = 0;    ///< engine calls of one run
  double cpu_share = 0;  ///< over the timed runs (see cpu_share_meter)
  /// Constrained decoding (time_decode with a grammar): the median, per step, of the
  /// worker's grammar work outside the engine (advancing every sequence's state, looking
  /// up its mask); the masking itself runs inside the engine's step, in median_s.
  double grammar_s = 0;
};

/// Prefills a `prompt_tokens`-token prompt from position 0 in chunks of `chunk` tokens, one
/// engine call per chunk: one untimed run, then `repeat` timed ones (median of the whole
/// prompt's time). The prompt's blocks come from `pool` and go back to it; a pool too
/// small is errc::out_of_blocks.
result<engine_timing> time_prefill(engine& eng, block_pool& pool, uint32_t prompt_tokens,
                                   uint32_t chunk, uint32_t repeat, uint32_t threads);

/// Blocks time_decode takes from the pool per sequence.
uint32_t decode_blocks_per_seq(const kv_layout& layout, uint32_t context, uint32_t steps,
                               uint32_t warm_steps);

/// `batch` sequences of `context` context each (prefilled once, the KV copied into every
/// sequence's own blocks so the cache traffic is real), then `warm_steps` untimed and
/// `steps` timed decode steps over the whole batch: the median step.
/// With `grammar`, every sequence's output is constrained by it, as a decode worker does
/// it: the state advanced over each new token, the mask handed to the engine.
result<engine_timing> time_decode(engine& eng, block_pool& pool, uint32_t batch, uint32_t context,
                                  uint32_t steps, uint32_t warm_steps, uint32_t threads,
                                  std::shared_ptr<const grammar::token_automaton> grammar = {});

}  // namespace tokenmill::app
