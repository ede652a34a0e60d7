// Greedy argmax: one block per row. Each thread keeps the best (value, id) of a strided
// slice; warp shuffles then shared memory combine them, preferring the lower id on ties.
#include "gpu/cuda_util.hpp"
#include "gpu/sampling.cuh"

namespace tokenmill::gpu {

namespace {

constexpr unsigned threads = 256;  // a multiple of 32, at most 32 warps
constexpr unsigned warps = threads / 32;

/// A candidate: id < 0 means none yet (NaN values never become candidates).
struct best {
  float v;
  int32_t id;
};

__device__ inline best better(best a, best b) {
  if (b.id < 0) return a;
  if (a.id < 0) return b;
  return b.v > a.v || (b.v == a.v && b.id < a.id) ? b : a;
}

__device__ inline best shuffle_best(best a) {
  for (int off = 16; off > 0; off /= 2) {
    best o{__shfl_xor_sync(0xffffffffu, a.v, off), __shfl_xor_sync(0xffffffffu, a.id, off)};
    a = better(a, o);
  }
  return a;
}

__global__ void argmax_kernel(const float* logits, uint32_t vocab, int32_t* out) {
  __shared__ best partial[warps];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
  best b{0.0f, -1};
  // Ascending ids per thread, so a strict > keeps the lowest id among equals.
  for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (!isnan(v) && (b.id < 0 || v > b.v)) b = best{v, static_cast<int32_t>(i)};
  }
  b = shuffle_best(b);
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = b;
  __syncthreads();
  if (warp == 0) {
    b = lane < warps ? partial[lane] : best{0.0f, -1};
    b = shuffle_best(b);
    if (lane == 0) out[blockIdx.x] = b.id < 0 ? 0 : b.id;  // an all-NaN row: id 0
  }
}

}  // namespace

void argmax_rows(const float* logits, uint32_t rows, uint32_t vocab, int32_t* out,
                 cudaStream_t stream) {
  if (rows == 0) return;
  argmax_kernel<<<rows, threads, 0, stream>>>(logits, vocab, out);
  TM_CUDA_LAUNCH();
}

}  // namespace tokenmill::gpu
