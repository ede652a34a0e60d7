#pragma once
/// Types shared by the CUDA kernels and their host callers. Host code (g++) includes the
/// kernel headers too, so nothing here needs nvcc: only the CUDA runtime API header.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tokenmill::gpu {

/// Element type of weights and of the activations fed to GEMMs. f32 is the parity mode
/// (bit-for-bit comparable to the CPU engine up to summation order); bf16/f16 the serving
/// modes (FP32 accumulation everywhere).
enum class elem : uint8_t { f32, f16, bf16 };

/// Bytes of one element.
constexpr size_t elem_bytes(elem t) {
  return t == elem::f32 ? 4 : 2;
}

/// The KV cache of one engine in device memory, block-major (DESIGN.md §4, the same layout
/// as kv_layout): block b starts at base + b * block_bytes and holds
/// [layer][K=0|V=1][kv_head][slot < block_tokens][head_dim] elements of `kv_f16 ? half :
/// float`. Sequences address it through block tables: row s of `tables` (stride
/// `table_stride` entries) lists the blocks of sequence s in position order.
struct paged_kv {
  void* base = nullptr;
  size_t block_bytes = 0;
  uint32_t layers = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t block_tokens = 0;
  bool kv_f16 = true;               ///< false: f32 KV
  const int32_t* tables = nullptr;  ///< device [num_seqs][table_stride]
  uint32_t table_stride = 0;
};

/// Where the rows of a batch sit: row r is token position `pos[r]` of sequence `seq[r]`
/// (an index into the block tables). Device arrays of `rows` entries. Rows of one sequence
/// are consecutive and in increasing position order (prefill chunks), or one row per
/// sequence (decode).
struct batch_rows {
  const int32_t* pos = nullptr;
  const int32_t* seq = nullptr;
  uint32_t rows = 0;
};

}  // namespace tokenmill::gpu
