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

/// Prefill-sized batches over any weight type: panels of 64 weight rows unpacked to f32
/// (dequantize_row) and transposed, each multiplied with every batch row by outer-product
/// register tiles (6 batch rows x 64 weight rows, one broadcast per batch row and step).
/// One thread, 2048x768, batch 64-512 (bench/bench_kernels, AMD EPYC with AVX-512): f16
/// 190-218 GFLOP/s against 149-168 for the former 4x6 dot-product tiles; the FMA peak
/// measured on that core is ~225.
void gemm_packed_avx512(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                        size_t r0, size_t r1);

}  // namespace tokenmill::cpu::detail
