#pragma once
/// Token embedding gather.
#include "gpu/types.cuh"

namespace tokenmill::gpu {

/// x[r][0..dim) = float(table[tokens[r]][0..dim)) for r < n. `table` is [vocab][dim] of
/// `t` in device memory; `tokens` device [n] (ids already validated on the host).
void embed(const void* table, elem t, const int32_t* tokens, uint32_t n, uint32_t dim, float* x,
           cudaStream_t stream);

}  // namespace tokenmill::gpu
