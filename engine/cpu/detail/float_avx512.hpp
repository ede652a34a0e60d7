#pragma once
/// The AVX-512 float kernels of linear() (kernels.cpp picks them at run time): 16-lane
/// register tiles, masked loads for the column tail, F16C/bf16 widening of 16 weights per
/// instruction. Only called where avx512_float_available().
#include <cstddef>

#include "engine/tensor.hpp"

namespace tokenmill::cpu::detail {

/// Whether this CPU runs the AVX-512 F/BW/VL float kernels (decided once).
bool avx512_float_available();

/// gemv over f32, f16 or bf16 weights: 4 weight rows x 2 batch rows per register tile, the
/// weights read once per call whatever n (see linear()).
void gemv_elem_avx512(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                      size_t r0, size_t r1);

/// Prefill-sized batches over any weight type: weight rows unpacked to f32 four at a time
/// (dequantize_row), 4 weight rows x 6 batch rows register tiles over blocks of batch rows
/// that stay in L2.
void gemm_packed_avx512(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                        size_t r0, size_t r1);

}  // namespace tokenmill::cpu::detail
