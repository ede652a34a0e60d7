#pragma once
/// The CPU backend (DESIGN.md §5): real math on host cores, the reference every GPU kernel
/// is tested against. Multi-threaded; reads and writes the block-major paged KV cache.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/blend.hpp"
#include "engine/chunk_blender.hpp"
#include "engine/engine.hpp"
#include "engine/model.hpp"

namespace tokenmill {

namespace cpu {
class thread_pool;
}

struct cpu_engine_config {
  uint32_t threads = 0;  ///< compute threads of the engine's own pool; 0 = the machine's
  /// A compute pool shared with the process's other cpu engines (made with one caller
  /// slot per engine): idle threads join whichever engine has work, decode steps first.
  /// Null: the engine makes its own pool of `threads`.
  std::shared_ptr<cpu::thread_pool> pool;
  uint32_t kv_dtype_bytes = 2;  ///< 4: f32 KV cache, 2: f16 KV cache
  uint32_t block_tokens = 16;   ///< tokens per KV block
};

/// The KV layout the engine uses for `model` under `cfg` (layers, kv_heads, head_dim,
/// block_tokens, dtype) — what the worker's block pool must be built with.
kv_layout cpu_kv_layout(const llama_config& model, const cpu_engine_config& cfg);

class cpu_engine final : public engine, public chunk_blender {
 public:
  /// Throws std::invalid_argument when the config cannot serve the model: construction is
  /// inside engine/, and make_engine (engine_factory.hpp) turns that into a value.
  cpu_engine(std::shared_ptr<const loaded_model> model, cpu_engine_config cfg);
  ~cpu_engine() override;

  const model_info& info() const override { return info_; }
  chunk_blender* blender() override { return this; }
  result<std::vector<token_id>> prefill(block_pool& pool,
                                        std::span<const prefill_chunk> batch) override;
  result<std::vector<token_id>> decode(block_pool& pool,
                                       std::span<const decode_seq> batch) override;
  /// A real model cannot predict its KV contents: always success.
  result<void> check_kv(const block_pool&, std::span<const token_id>, std::span<const block_id>,
                        uint32_t, uint32_t) const override {
    return {};
  }

  /// Computes one prompt chunk like prefill() and returns the logits of every position in
  /// [begin, end), row-major [end - begin][vocab]. For correctness tests and benchmarks.
  /// Errors as prefill()'s.
  result<std::vector<float>> prefill_logits(block_pool& pool, const prefill_chunk& chunk);
  /// One decode step like decode(), returning logits [batch][vocab] instead of tokens.
  result<std::vector<float>> decode_logits(block_pool& pool, std::span<const decode_seq> batch);

  /// prefill() of one chunk returning the logits of its last position [vocab] (the same
  /// arithmetic as prefill(), which samples from them).
  result<std::vector<float>> prefill_last_logits(block_pool& pool, const prefill_chunk& chunk);

  /// Computes `chunk` as if the prompt's position 0 sat at position `base_position`: keys
  /// are rotated at base_position + slot while attention still covers slots [0, pos]. With
  /// a chunk alone in its blocks (begin 0), this is a chunk cache entry rotated at a known
  /// base position. base_position 0 is prefill(). Errors as prefill()'s.
  result<std::vector<token_id>> prefill_at(block_pool& pool, const prefill_chunk& chunk,
                                           uint32_t base_position) override;

  /// Copies a cached chunk's KV into a sequence, rotating every key of every layer and KV
  /// head once by (dst_begin - src_position) positions (both RoPE conventions; the same
  /// frequencies, llama3 scaling included, as the forward pass). Values are copied. The
  /// source blocks are only read. errc::invalid_request (nothing written) when a block
  /// table is too short or names a block outside the pool, or tokens is 0.
  result<void> move_chunk_kv(block_pool& pool, const chunk_move& move) override;

  /// Prefills a prompt whose reused segments' KV is in place, recomputing the positions
  /// engine/blend.hpp selects: every computed segment, the last position, and
  /// recompute_ratio of the reused positions (first tokens of each chunk, then the highest
  /// K/V deviation on select_layer). Positions not selected keep their reused KV in every
  /// layer past select_layer (below it every position's KV is rewritten). At ratio 1 the
  /// result (logits and KV) is a full prefill's bit for bit; at 0 no reused KV is touched.
  /// errc::invalid_request (nothing written) for bad segments, a ratio outside [0, 1], a
  /// cached_prefix not before the last position, or what prefill() refuses.
  result<blend_outcome> prefill_blend(block_pool& pool, const blend_prefill& req) override;

  const cpu_engine_config& config() const { return cfg_; }

 private:
  struct impl;
  std::shared_ptr<const loaded_model> model_;
  cpu_engine_config cfg_;
  model_info info_;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill
