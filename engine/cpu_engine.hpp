#pragma once
/// The CPU backend (DESIGN.md §5): real math on host cores, the reference every GPU kernel
/// is tested against. Multi-threaded; reads and writes the block-major paged KV cache.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/engine.hpp"
#include "engine/model.hpp"

namespace tokenmill {

struct cpu_engine_config {
  uint32_t threads = 0;         ///< compute threads; 0 = the machine's hardware threads
  uint32_t kv_dtype_bytes = 2;  ///< 4: f32 KV cache, 2: f16 KV cache
  uint32_t block_tokens = 16;   ///< tokens per KV block
};

/// The KV layout the engine uses for `model` under `cfg` (layers, kv_heads, head_dim,
/// block_tokens, dtype) — what the worker's block pool must be built with.
kv_layout cpu_kv_layout(const llama_config& model, const cpu_engine_config& cfg);

class cpu_engine final : public engine {
 public:
  /// Throws std::invalid_argument when the config cannot serve the model: construction is
  /// inside engine/, and make_engine (engine_factory.hpp) turns that into a value.
  cpu_engine(std::shared_ptr<const loaded_model> model, cpu_engine_config cfg);
  ~cpu_engine() override;

  const model_info& info() const override { return info_; }
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

  const cpu_engine_config& config() const { return cfg_; }

 private:
  struct impl;
  std::shared_ptr<const loaded_model> model_;
  cpu_engine_config cfg_;
  model_info info_;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill
