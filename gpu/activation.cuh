#pragma once
/// Element-wise kernels: SwiGLU, residual add, bias add, conversions.
#include "gpu/types.cuh"

namespace tokenmill::gpu {

/// out[r][i] = silu(gu[r][i]) * gu[r][ffn + i] for r < rows, i < ffn, where gu is the fused
/// gate|up projection [rows][2 * ffn] (f32) and silu(g) = g / (1 + exp(-g)). `out` is
/// [rows][ffn] of `out_t`.
void swiglu(const float* gate_up, void* out, elem out_t, uint32_t rows, uint32_t ffn,
            cudaStream_t stream);

/// y[i] += x[i] for i < n.
void residual_add(float* y, const float* x, size_t n, cudaStream_t stream);

/// y[r][i] += b[i] for r < rows, i < cols (y has row stride `stride` floats).
void add_bias(float* y, const float* b, uint32_t rows, uint32_t cols, uint32_t stride,
              cudaStream_t stream);

/// dst[i] = t(src[i]) for i < n (round to nearest even).
void convert_from_f32(const float* src, void* dst, elem t, size_t n, cudaStream_t stream);

/// dst[i] = float(src[i]) for i < n.
void convert_to_f32(const void* src, elem t, float* dst, size_t n, cudaStream_t stream);

}  // namespace tokenmill::gpu
