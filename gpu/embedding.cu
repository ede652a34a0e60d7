// Token embedding gather: one block per token row, threads striding over the dimensions.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gpu/cuda_util.hpp"
#include "gpu/embedding.cuh"

namespace tokenmill::gpu {

namespace {

__device__ inline float to_f32(float v) {
  return v;
}
__device__ inline float to_f32(__half v) {
  return __half2float(v);
}
__device__ inline float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__global__ void embed_kernel(const T* table, const int32_t* tokens, uint32_t dim, float* x) {
  const size_t r = blockIdx.x;
  const T* src = table + static_cast<size_t>(tokens[r]) * dim;
  float* dst = x + r * dim;
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x)
    dst[i] = to_f32(src[i]);
}

constexpr unsigned threads = 256;

}  // namespace

void embed(const void* table, elem t, const int32_t* tokens, uint32_t n, uint32_t dim, float* x,
           cudaStream_t stream) {
  if (n == 0 || dim == 0) return;
  switch (t) {
    case elem::f32:
      embed_kernel<<<n, threads, 0, stream>>>(static_cast<const float*>(table), tokens, dim, x);
      break;
    case elem::f16:
      embed_kernel<<<n, threads, 0, stream>>>(static_cast<const __half*>(table), tokens, dim, x);
      break;
    case elem::bf16:
      embed_kernel<<<n, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(table), tokens, dim,
                                              x);
      break;
  }
  TM_CUDA_LAUNCH();
}

}  // namespace tokenmill::gpu
