// Element-wise kernels: grid-stride loops over a flat index, 256 threads a block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "gpu/activation.cuh"
#include "gpu/cuda_util.hpp"

namespace tokenmill::gpu {

namespace {

constexpr unsigned threads = 256;

/// Blocks for `n` elements; the kernels loop, so a cap only lengthens each thread's loop.
unsigned blocks_for(size_t n) {
  return static_cast<unsigned>(std::min<size_t>((n + threads - 1) / threads, size_t{1} << 20));
}

__device__ inline float to_f32(float v) {
  return v;
}
__device__ inline float to_f32(__half v) {
  return __half2float(v);
}
__device__ inline float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

__device__ inline void store(float* p, float v) {
  *p = v;
}
__device__ inline void store(__half* p, float v) {
  *p = __float2half_rn(v);
}
__device__ inline void store(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

__device__ inline size_t first_index() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline size_t grid_stride() {
  return static_cast<size_t>(gridDim.x) * blockDim.x;
}

template <class T>
__global__ void swiglu_kernel(const float* gu, T* out, uint32_t ffn, size_t n) {
  for (size_t k = first_index(); k < n; k += grid_stride()) {
    const size_t r = k / ffn, i = k % ffn;
    const float g = gu[r * 2 * ffn + i];
    const float u = gu[r * 2 * ffn + ffn + i];
    store(out + k, g / (1.0f + expf(-g)) * u);  // the CPU's silu_mul, in its order
  }
}

__global__ void residual_add_kernel(float* y, const float* x, size_t n) {
  for (size_t k = first_index(); k < n; k += grid_stride())
    y[k] += x[k];
}

__global__ void add_bias_kernel(float* y, const float* b, uint32_t cols, uint32_t stride,
                                size_t n) {
  for (size_t k = first_index(); k < n; k += grid_stride()) {
    const size_t r = k / cols, i = k % cols;
    y[r * stride + i] += b[i];
  }
}

template <class T>
__global__ void from_f32_kernel(const float* src, T* dst, size_t n) {
  for (size_t k = first_index(); k < n; k += grid_stride())
    store(dst + k, src[k]);
}

template <class T>
__global__ void to_f32_kernel(const T* src, float* dst, size_t n) {
  for (size_t k = first_index(); k < n; k += grid_stride())
    dst[k] = to_f32(src[k]);
}

}  // namespace

void swiglu(const float* gate_up, void* out, elem out_t, uint32_t rows, uint32_t ffn,
            cudaStream_t stream) {
  const size_t n = size_t{rows} * ffn;
  if (n == 0) return;
  const unsigned b = blocks_for(n);
  switch (out_t) {
    case elem::f32:
      swiglu_kernel<<<b, threads, 0, stream>>>(gate_up, static_cast<float*>(out), ffn, n);
      break;
    case elem::f16:
      swiglu_kernel<<<b, threads, 0, stream>>>(gate_up, static_cast<__half*>(out), ffn, n);
      break;
    case elem::bf16:
      swiglu_kernel<<<b, threads, 0, stream>>>(gate_up, static_cast<__nv_bfloat16*>(out), ffn, n);
      break;
  }
  TM_CUDA_LAUNCH();
}

void residual_add(float* y, const float* x, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  residual_add_kernel<<<blocks_for(n), threads, 0, stream>>>(y, x, n);
  TM_CUDA_LAUNCH();
}

void add_bias(float* y, const float* b, uint32_t rows, uint32_t cols, uint32_t stride,
              cudaStream_t stream) {
  const size_t n = size_t{rows} * cols;
  if (n == 0) return;
  add_bias_kernel<<<blocks_for(n), threads, 0, stream>>>(y, b, cols, stride, n);
  TM_CUDA_LAUNCH();
}

void convert_from_f32(const float* src, void* dst, elem t, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned b = blocks_for(n);
  switch (t) {
    case elem::f32:
      from_f32_kernel<<<b, threads, 0, stream>>>(src, static_cast<float*>(dst), n);
      break;
    case elem::f16:
      from_f32_kernel<<<b, threads, 0, stream>>>(src, static_cast<__half*>(dst), n);
      break;
    case elem::bf16:
      from_f32_kernel<<<b, threads, 0, stream>>>(src, static_cast<__nv_bfloat16*>(dst), n);
      break;
  }
  TM_CUDA_LAUNCH();
}

void convert_to_f32(const void* src, elem t, float* dst, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned b = blocks_for(n);
  switch (t) {
    case elem::f32:
      to_f32_kernel<<<b, threads, 0, stream>>>(static_cast<const float*>(src), dst, n);
      break;
    case elem::f16:
      to_f32_kernel<<<b, threads, 0, stream>>>(static_cast<const __half*>(src), dst, n);
      break;
    case elem::bf16:
      to_f32_kernel<<<b, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(src), dst, n);
      break;
  }
  TM_CUDA_LAUNCH();
}

}  // namespace tokenmill::gpu
