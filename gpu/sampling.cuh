#pragma once
/// Picking tokens on the device.
#include "gpu/types.cuh"

namespace tokenmill::gpu {

/// out[r] = argmax of logits row r ([rows][vocab] f32); the lowest id wins ties and NaN
/// never wins (as the CPU sampler's greedy path). One block per row.
void argmax_rows(const float* logits, uint32_t rows, uint32_t vocab, int32_t* out,
                 cudaStream_t stream);

}  // namespace tokenmill::gpu
