#pragma once
/// The model engine interface (DESIGN.md §5). One interface, several backends, all driven
/// by the same workers: an engine computes prompt chunks and decode steps over sequences
/// whose KV lives in a caller-owned block pool. Calls block for the duration of the
/// compute, so workers call them from their own threads, never from CAF's scheduler.
///
/// Errors are values (STYLE.md §7): no exception leaves an engine call. A batch the engine
/// cannot take (a token outside the vocabulary, a block table too short, a pool of another
/// layout) is errc::invalid_request and nothing in the pool is touched; a failure while
/// computing (out of memory, a device error) is errc::internal.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/api_types.hpp"
#include "common/ids.hpp"
#include "common/pool_memory.hpp"
#include "common/result.hpp"
#include "engine/block_pool.hpp"
#include "engine/kv_layout.hpp"

namespace tokenmill {

class chunk_blender;

/// What a worker must know about the model it serves.
struct model_info {
  std::string name;
  uint32_t vocab_size = 0;
  uint32_t max_context = 0;  ///< tokens (prompt + generated)
  token_id bos = 1;
  token_id eos = 2;
  kv_layout layout;
};

/// One prompt chunk: compute positions [begin, end) of `tokens`, reading the KV of earlier
/// positions and writing the chunk's KV into `blocks` (the sequence's block table).
struct prefill_chunk {
  std::span<const token_id> tokens;  ///< the whole prompt
  uint32_t begin = 0;
  uint32_t end = 0;
  std::span<const block_id> blocks;
  sampling_params sampling;
  /// Where the engine writes the sampled token's log-probabilities when
  /// sampling.top_logprobs >= 0 (the caller owns it until the call returns); null: nowhere.
  token_logprobs* logprobs = nullptr;
  /// Constrained decoding: the tokens the sampled one may be (one bit per id, from the
  /// sequence's grammar state); empty = any token.
  std::span<const uint64_t> allowed;
};

/// One decode step of one sequence: `tokens` is the context including the newest token,
/// whose KV is not written yet; the step writes it at position tokens.size()-1 and
/// samples the next token.
struct decode_seq {
  std::span<const token_id> tokens;
  std::span<const block_id> blocks;
  sampling_params sampling;
  /// tokens[0, prompt_len) is the prompt, the rest was generated (for the penalties).
  uint32_t prompt_len = 0;
  /// As prefill_chunk::logprobs.
  token_logprobs* logprobs = nullptr;
  /// Constrained decoding: the tokens the sampled one may be (one bit per id); empty = any.
  std::span<const uint64_t> allowed;
};

class engine {
 public:
  virtual ~engine() = default;
  virtual const model_info& info() const = 0;
  /// Position-independent chunk reuse (engine/chunk_blender.hpp, issue 17), or nullptr when
  /// this backend has none (sim, cuda): workers then prefill segmented prompts in full.
  virtual chunk_blender* blender() { return nullptr; }
  /// Computes a batch of prompt chunks. Returns, per chunk, the token sampled after the
  /// chunk's last position (meaningful when the chunk ends the prompt).
  virtual result<std::vector<token_id>> prefill(block_pool& pool,
                                                std::span<const prefill_chunk> batch) = 0;
  /// Memory for a KV pool of `bytes` bytes, where this engine computes: zeroed host memory
  /// by default, device memory for the CUDA engine.
  virtual std::unique_ptr<pool_memory> allocate_kv_memory(size_t bytes) const {
    return make_host_memory(bytes);
  }
  /// Runs one decode step over a batch; returns the next token of each sequence.
  virtual result<std::vector<token_id>> decode(block_pool& pool,
                                               std::span<const decode_seq> batch) = 0;
  /// Checks that positions [begin, end) of `tokens` have the KV contents this engine
  /// would have written into `blocks`. Success when they do (or when the engine cannot
  /// know, as a real model cannot), else errc::kv_corrupt saying what is wrong.
  virtual result<void> check_kv(const block_pool& pool, std::span<const token_id> tokens,
                                std::span<const block_id> blocks, uint32_t begin,
                                uint32_t end) const = 0;
};

/// Success when `tokens[begin, end)` are ids below `vocab` and `blocks` covers positions
/// [0, end) in `layout` with ids inside `pool`, else errc::invalid_request saying what is
/// wrong ("token id 9999 at position 3 is outside the vocabulary [0, 512)"). Engines check
/// every sequence of a batch with it before they touch the pool.
result<void> check_sequence(const block_pool& pool, const kv_layout& layout, uint32_t vocab,
                            std::span<const token_id> tokens, uint32_t begin, uint32_t end,
                            std::span<const block_id> blocks);

/// A pool of `num_blocks` blocks in the engine's layout and memory.
inline std::unique_ptr<block_pool> make_pool(const engine& e, uint32_t num_blocks) {
  return std::make_unique<block_pool>(
      e.info().layout, num_blocks,
      e.allocate_kv_memory(size_t{num_blocks} * e.info().layout.block_bytes()));
}

}  // namespace tokenmill
