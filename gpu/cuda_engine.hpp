#pragma once
/// The CUDA backend's engine (DESIGN.md §5): the CPU engine's forward pass on one NVIDIA
/// GPU — cuBLAS GEMMs over weights converted to the configured dtype, the gpu/ kernels for
/// norm, RoPE, paged attention over the block-major KV pool in device memory, SwiGLU and
/// argmax, and decode steps replayed from CUDA graphs bucketed by batch size. The rest of
/// tokenmill creates it through make_cuda_engine (gpu/cuda_backend.hpp); tests and
/// benchmarks include this header for the logits entry points. No CUDA header here.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.hpp"
#include "engine/model.hpp"
#include "gpu/cuda_backend.hpp"

namespace tokenmill {

/// The KV layout a cuda engine uses for `model` under `cfg`: exactly cpu_kv_layout's for
/// the same kv_dtype_bytes and block_tokens, so KV blocks move between the two engines.
kv_layout cuda_kv_layout(const llama_config& model, const cuda_engine_config& cfg);

class cuda_engine final : public engine {
 public:
  /// Validates `cfg` and the model like the CPU engine (std::invalid_argument, "cuda
  /// engine: ..."), then needs a device (std::runtime_error with the reason when there is
  /// none) and uploads the weights converted to cfg.dtype.
  cuda_engine(std::shared_ptr<const loaded_model> model, cuda_engine_config cfg);
  ~cuda_engine() override;
  cuda_engine(const cuda_engine&) = delete;
  cuda_engine& operator=(const cuda_engine&) = delete;

  const model_info& info() const override { return info_; }
  /// A CUDA failure while computing (cuda_error) is errc::internal with its file:line.
  result<std::vector<token_id>> prefill(block_pool& pool,
                                        std::span<const prefill_chunk> batch) override;
  result<std::vector<token_id>> decode(block_pool& pool,
                                       std::span<const decode_seq> batch) override;
  /// Zeroed device memory on cfg.device (plus one private spare block for graph padding).
  std::unique_ptr<pool_memory> allocate_kv_memory(size_t bytes) const override;
  /// A real model cannot predict its KV contents: always success.
  result<void> check_kv(const block_pool&, std::span<const token_id>, std::span<const block_id>,
                        uint32_t, uint32_t) const override {
    return {};
  }

  /// Computes one prompt chunk like prefill() and returns the logits of every position in
  /// [begin, end), row-major [end - begin][vocab]. For correctness tests and benchmarks.
  /// Errors as prefill()'s.
  result<std::vector<float>> prefill_logits(block_pool& pool, const prefill_chunk& chunk);
  /// One decode step like decode() (graphs included), returning logits [batch][vocab].
  result<std::vector<float>> decode_logits(block_pool& pool, std::span<const decode_seq> batch);

  const cuda_engine_config& config() const { return cfg_; }

 private:
  struct impl;
  std::shared_ptr<const loaded_model> model_;
  cuda_engine_config cfg_;
  model_info info_;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill
