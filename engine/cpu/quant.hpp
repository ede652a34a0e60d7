#pragma once
/// GGML's block quantization formats (the GGUF specification's layouts, written here from
/// the format description): scalar reference dequantization, quantization for model
/// writers, and the integer dot products the CPU engine's decode path runs on them.
///
/// Layouts (little-endian; d, m, dmin are IEEE halves; u are unsigned quants):
///   q4_0  32 values, 18 bytes: d, qs[16]; value j = d * (u_j - 8); u_j = qs[j] & 15 and
///         u_{j+16} = qs[j] >> 4 (j < 16).
///   q4_1  32 values, 20 bytes: d, m, qs[16]; value = d * u + m (nibbles as q4_0).
///   q5_0  32 values, 22 bytes: d, qh (u32), qs[16]; u_j = nibble | bit j of qh << 4;
///         value = d * (u - 16).
///   q5_1  32 values, 24 bytes: d, m, qh, qs[16]; value = d * u + m.
///   q4_k  256 values, 144 bytes: d, dmin, scales[12], qs[128]. Eight sub-blocks of 32 with
///         6-bit scale sc_s and min m_s packed in scales[12] (s < 4: sc = scales[s] & 63,
///         m = scales[s+4] & 63; s >= 4: sc = scales[s+4] & 15 | (scales[s-4] >> 6) << 4,
///         m = scales[s+4] >> 4 | (scales[s] >> 6) << 4). Sub-blocks 2c and 2c+1 share
///         qs[32c .. 32c+31]: low nibbles for 2c, high for 2c+1. value = d*sc*u - dmin*m.
///   q5_k  256 values, 176 bytes: d, dmin, scales[12], qh[32], qs[128]; as q4_k, and the
///         fifth bit of element l of sub-block s is bit s of qh[l].
///   q6_k  256 values, 210 bytes: ql[128], qh[64], int8 scales[16], d. Halves h of 128
///         values use ql[64h..], qh[32h..]: for l < 32, value 128h + 32k + l has low bits
///         from ql[64h + l + 32 (k & 1)] (low nibble for k < 2, high for k >= 2) and high
///         bits (qh[32h + l] >> 2k) & 3; value = d * scales[e / 16] * (u - 32).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "engine/tensor.hpp"

namespace tokenmill::cpu {

/// Whether linear layers over `t` run on integer dot products with 8-bit activations
/// (q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k; q8_0 keeps its float kernel).
bool is_int_dot_dtype(dtype t);

/// The scalar reference: one row of `cols` values of block format `t` (any block dtype,
/// q8_0 included) -> floats, computed as the format defines each value.
void dequantize_block_row(dtype t, const std::byte* row, float* dst, size_t cols);

/// floats -> one row of `t` (any dtype; cols a multiple of block_elems(t); `dst` holds
/// row_bytes(t, cols)). Rounding: f16/bf16 to nearest even; q8_0, q4_0, q4_1, q5_0, q5_1
/// GGML's reference rules (q4_0/q5_0: d = the signed value of largest magnitude / -8 or
/// -16, u = min(15|31, trunc(x/d + 8.5|16.5)); q4_1/q5_1: d = (max - min) / 15|31, m = min,
/// u = round((x - m) / d)); K formats: per sub-block min-max ranges, scales and mins rounded
/// up so every value is inside its sub-block's range, values rounded to nearest, so every
/// value is within half a step (d*sc) of its original (no scale search).
void quantize_row(dtype t, const float* src, std::byte* dst, size_t cols);

/// The instruction sets the integer dot products can run with.
enum class quant_isa : uint8_t { scalar, avx2, avx512_vnni };

/// 32 activations quantized to 8 bits: x ~ d * q, d = max|x| / 127, q rounded to nearest
/// even; sum[h] = sum of q over values [16h, 16h + 16) (for the formats' offsets and mins).
struct act_block {
  float d;
  int16_t sum[2];
  int8_t q[32];
};
static_assert(sizeof(act_block) == 40);

/// x[cols] (cols % 32 == 0) -> cols / 32 blocks.
void quantize_activations(const float* x, act_block* out, size_t cols);

/// 256 activations quantized to 8 bits for the K formats (one scale per super-block, so a
/// super-block's integer sums can be scaled by the weights' integer sub-block scales and
/// added up before any float work): x ~ d * q, d = max|x| / 127; bsums[g] = sum of q over
/// values [16g, 16g + 16).
struct act_block_k {
  float d;
  int16_t bsums[16];
  int8_t q[256];
};

/// x[cols] (cols % 256 == 0) -> cols / 256 blocks.
void quantize_activations_k(const float* x, act_block_k* out, size_t cols);

/// Whether `t` is a K format (q4_k, q5_k, q6_k: 256-value super-blocks, act_block_k).
bool is_k_dtype(dtype t);

/// n activation rows of `cols` values quantized for weights of type `t` (act_block for the
/// 32-value formats, act_block_k for the K formats).
struct quantized_acts {
  std::vector<act_block> b32;
  std::vector<act_block_k> b256;
  size_t stride = 0;  ///< blocks per row
};
void quantize_acts(dtype t, const float* x, size_t n, size_t cols, quantized_acts& out);
/// out[i] = dot of one weight row of `t` with activation row i of `x`, i < n.
void dot_acts(quant_isa isa, dtype t, const std::byte* row, size_t cols, const quantized_acts& x,
              size_t n, float* out);

/// dot_acts over `nrows` consecutive weight rows of `t`: out[i * out_stride + j] = dot of
/// weight row j with activation row i (j < nrows, i < n), each value what dot_acts gives.
void dot_acts_rows(quant_isa isa, dtype t, const std::byte* rows, size_t nrows, size_t cols,
                   const quantized_acts& x, size_t n, float* out, size_t out_stride);

/// From this many activation rows dot_acts_rows runs the K formats on AVX-512 VNNI with
/// the prefill tiles (each weight row unpacked once per block of activation rows, run
/// against 8 rows at a time) instead of the decode kernel (unpacked once per 4 rows). Every
/// output is the same float either way. One thread, 2048x768 (bench/bench_kernels): at 8
/// rows the tiles ran 118-120 GFLOP/s against 95-110 for the decode kernel, at 32 rows
/// 136-140 against 108; so decode batches of 8 or more take them too.
inline constexpr size_t int_tile_min_rows = 8;

/// Whether prefill-sized batches of a linear layer over `t` multiply on integers with 8-bit
/// activations on `isa` (the K formats on avx512_vnni: the prefill tiles) rather than unpack
/// weight rows to f32 tiles for the float GEMM. Measured on one thread, 2048x768, 64-512
/// rows (AMD EPYC, AVX-512 VNNI; bench/bench_kernels, two runs under different loads): q4_k
/// tiles 109-144 GFLOP/s against 71-93 for the f32 tiles, q6_k 109-144 against 70-94. Not
/// chosen: q4_0/q4_1/q5_0/q5_1, whose int kernel (one 32-value block per step, a scalar
/// offset per row) ran 24-44 against 80-96; and AVX2 without VNNI, which has no tiles.
/// Since the f32 GEMM became outer-product panels (float_avx512.hpp) the f32 tiles run
/// q4_k 160-191 GFLOP/s against 188-196 for the int tiles and q6_k 167-209 against
/// 198-204 (64-512 rows): the int tiles stay, as fast or faster and bit for bit the
/// decode kernel's values. q4_0 ran 185 on f32 tiles against 40 int (at 8-32 rows 105-117
/// since its AVX-512 kernel takes two blocks per vector: the f32 tiles stay for prefill).
bool int_prefill(quant_isa isa, dtype t);

/// The best one this CPU has (decided once): avx512_vnni needs AVX-512 F/BW/VL/VNNI,
/// avx2 AVX2+FMA+F16C.
quant_isa best_quant_isa();
std::string_view quant_isa_name(quant_isa isa);

/// Whether avx512_vnni's q4_k batch-1 kernel can unpack nibbles with GFNI (vgf2p8affineqb)
/// here; it does where it can, unless set_quant_gfni(false) (for the tests and benchmarks:
/// the pair-form twin without GFNI gives the same bits). Returns the previous setting.
bool quant_gfni_available();
bool set_quant_gfni(bool allow);

/// dequantize_block_row() for the int-dot formats through the same unpacking as the dot
/// products (a * u + b per value, fused: the reference's values exactly, up to the sign of
/// zeros), on `isa`: what prefill uses to unpack weight tiles.
void dequantize_int_row(quant_isa isa, dtype t, const std::byte* row, float* dst, size_t cols);

/// The 32-value formats (q4_0, q4_1, q5_0, q5_1):
/// out[i] = dot of one weight row of `t` (`cols` values) with activation row i, for i < n;
/// activation row i starts at x + i * x_stride (in blocks). `isa` must be available
/// (best_quant_isa() or below); scalar is the portable twin the tests compare against.
void dot_int_rows(quant_isa isa, dtype t, const std::byte* row, size_t cols, const act_block* x,
                  size_t x_stride, size_t n, float* out);
/// The K formats (q4_k, q5_k, q6_k), the same with super-block activations.
void dot_int_rows_k(quant_isa isa, dtype t, const std::byte* row, size_t cols, const act_block_k* x,
                    size_t x_stride, size_t n, float* out);

}  // namespace tokenmill::cpu
