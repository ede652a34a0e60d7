#pragma once
/// The CUDA backend as the rest of tokenmill sees it: plain C++, no CUDA headers, the same
/// declarations whether or not this build has CUDA (STYLE.md §8). Without nvcc at
/// configure time these report that the build has no CUDA instead of creating anything.
#include <cstdint>
#include <memory>
#include <string>

#include "engine/engine.hpp"
#include "engine/model.hpp"

namespace tokenmill {

struct cuda_engine_config {
  int device = 0;               ///< CUDA device ordinal
  std::string dtype = "bf16";   ///< weights and GEMM inputs: "bf16", "f16" or "f32" (parity)
  uint32_t kv_dtype_bytes = 2;  ///< 2: f16 KV cache, 4: f32 KV cache
  uint32_t block_tokens = 16;   ///< tokens per KV block
  bool graphs = true;           ///< capture decode steps in CUDA graphs, bucketed by batch
  uint32_t max_batch = 256;     ///< largest decode batch a graph is captured for
};

/// Whether this build has the CUDA backend compiled in.
bool cuda_backend_built();

/// Usable CUDA devices; 0 with `why` set when none (or when the build has no CUDA).
int cuda_device_count(std::string& why);

/// A CUDA engine for `model`; throws std::invalid_argument (bad config or model) or
/// std::runtime_error (no device, CUDA failure, build without CUDA) with the reason.
std::unique_ptr<engine> make_cuda_engine(std::shared_ptr<const loaded_model> model,
                                         const cuda_engine_config& cfg);

/// What bench-engine puts next to the engine's figures, measured on `device` by the same
/// program: the copy bandwidth of device memory (bytes read + written per second by
/// cudaMemcpy device to device over `bytes`, best of several runs) and the throughput of a
/// cuBLAS GEMM [m x k] . [k x n] in `dtype` ("bf16", "f16", "f32") with FP32 accumulation.
/// Throw std::runtime_error with the reason where there is no device or no CUDA.
struct cuda_device_probe {
  std::string name;      ///< the device's name
  double memory_gb = 0;  ///< total device memory
  double copy_bytes_per_s = 0;
};
cuda_device_probe probe_cuda_device(int device, size_t bytes);
double cuda_gemm_flops_per_s(int device, const std::string& dtype, uint32_t m, uint32_t n,
                             uint32_t k);

}  // namespace tokenmill
