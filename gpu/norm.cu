// RMSNorm: one block per row. Each thread sums the squares of a strided slice in FP32; the
// block adds them with warp shuffles, then one value per warp through shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gpu/cuda_util.hpp"
#include "gpu/norm.cuh"

namespace tokenmill::gpu {

namespace {

constexpr unsigned threads = 256;  // a multiple of 32, at most 32 warps
constexpr unsigned warps = threads / 32;

__device__ inline void store(float* p, float v) {
  *p = v;
}
__device__ inline void store(__half* p, float v) {
  *p = __float2half_rn(v);
}
__device__ inline void store(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

/// Sum of `v` over the block, returned to every thread.
__device__ float block_sum(float v) {
  __shared__ float partial[warps];
  for (int off = 16; off > 0; off /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, off);
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.0f;
  for (int off = 16; off > 0; off /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;  // every warp reduced the same partials, so every thread holds the total
}

template <class T>
__global__ void rms_norm_kernel(const float* x, const float* w, T* y, uint32_t dim, float eps) {
  const size_t row = blockIdx.x;
  const float* xr = x + row * dim;
  T* yr = y + row * dim;
  float ss = 0.0f;
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x)
    ss += xr[i] * xr[i];
  ss = block_sum(ss);
  // The scale as the CPU computes it (in double, once per row); then x * scale * w in FP32
  // in the CPU's order. Writing y in place of x is safe: each thread reads before it writes
  // the same elements, and all reads of the sum happened before any write.
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(ss) / dim + eps));
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x)
    store(yr + i, xr[i] * scale * w[i]);
}

}  // namespace

void rms_norm(const float* x, const float* w, void* y, elem out_t, uint32_t rows, uint32_t dim,
              float eps, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return;
  switch (out_t) {
    case elem::f32:
      rms_norm_kernel<<<rows, threads, 0, stream>>>(x, w, static_cast<float*>(y), dim, eps);
      break;
    case elem::f16:
      rms_norm_kernel<<<rows, threads, 0, stream>>>(x, w, static_cast<__half*>(y), dim, eps);
      break;
    case elem::bf16:
      rms_norm_kernel<<<rows, threads, 0, stream>>>(x, w, static_cast<__nv_bfloat16*>(y), dim, eps);
      break;
  }
  TM_CUDA_LAUNCH();
}

}  // namespace tokenmill::gpu
