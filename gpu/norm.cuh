#pragma once
/// RMSNorm.
#include "gpu/types.cuh"

namespace tokenmill::gpu {

/// For each of `rows` rows of `dim` floats: y = x / sqrt(mean(x^2) + eps) * w, written as
/// `out_t` (the GEMM input type) with row stride `dim`. One block per row; the sum of
/// squares in FP32.
void rms_norm(const float* x, const float* w, void* y, elem out_t, uint32_t rows, uint32_t dim,
              float eps, cudaStream_t stream);

}  // namespace tokenmill::gpu
