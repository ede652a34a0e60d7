#pragma once
/// CPU kernels of the Llama forward pass: weight-format conversion, linear layers over
/// f32/f16/bf16/q8_0 weights with f32 activations and over the 4-6 bit block formats with
/// 8-bit activations (engine/cpu/quant.hpp), RMSNorm, RoPE, SwiGLU and softmax.
/// Every vectorized kernel (AVX2+FMA+F16C, and AVX-512 for the float linear layers, chosen
/// at run time) has a portable scalar twin (`*_scalar`) that the tests compare it against
/// and that runs where AVX2 is absent.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "engine/cpu/quant.hpp"
#include "engine/model.hpp"
#include "engine/tensor.hpp"

namespace tokenmill::cpu {

/// Whether the AVX2+FMA+F16C paths run on this machine (decided once, at first use).
bool simd_available();

// ---- scalar conversions -----------------------------------------------------------------

/// IEEE half -> float (exact, including subnormals, inf and NaN).
float f16_to_f32(uint16_t h);
/// float -> IEEE half, round to nearest even (as F16C's vcvtps2ph with RNE).
uint16_t f32_to_f16(float f);
/// bfloat16 -> float (exact).
float bf16_to_f32(uint16_t h);
/// float -> bfloat16, round to nearest even.
uint16_t f32_to_bf16(float f);

/// n halves -> floats.
void f16_to_f32_row(const uint16_t* src, float* dst, size_t n);
/// n floats -> halves (round to nearest even).
void f32_to_f16_row(const float* src, uint16_t* dst, size_t n);
void f16_to_f32_row_scalar(const uint16_t* src, float* dst, size_t n);
void f32_to_f16_row_scalar(const float* src, uint16_t* dst, size_t n);

/// One row of `cols` elements of weight type `t` -> floats. Block formats need whole blocks.
void dequantize_row(dtype t, const std::byte* row, float* dst, size_t cols);
void dequantize_row_scalar(dtype t, const std::byte* row, float* dst, size_t cols);
/// floats -> one q8_0 row (GGML's rule: d = max|x| / 127, q = round(x / d)); for tests and
/// model writers. cols % 32 == 0; `dst` holds row_bytes(q8_0, cols) bytes.
void quantize_row_q8_0(const float* src, std::byte* dst, size_t cols);

// ---- vector kernels ---------------------------------------------------------------------

/// sum_i a[i] * b[i].
float dot_f32(const float* a, const float* b, size_t n);
/// sum_i a[i] * f16(b[i]).
float dot_f32_f16(const float* a, const uint16_t* b, size_t n);
/// y[i] += alpha * x[i].
void axpy_f32(float alpha, const float* x, float* y, size_t n);
/// y[i] += alpha * f16(x[i]).
void axpy_f16(float alpha, const uint16_t* x, float* y, size_t n);
/// dot of f32 `x` with one weight row of type `t` (`cols` elements). For the int-dot block
/// formats (is_int_dot_dtype) `x` is quantized to 8 bits first (quantize_acts), as linear()
/// does for decode; dot_row_scalar is then the float reference on dequantized weights.
float dot_row(dtype t, const std::byte* row, const float* x, size_t cols);
float dot_row_scalar(dtype t, const std::byte* row, const float* x, size_t cols);

/// y = x / sqrt(mean(x^2) + eps) * w over n elements (y may alias x).
void rms_norm(const float* x, const float* w, float* y, size_t n, float eps);
/// rms_norm without SIMD: the same bits.
void rms_norm_scalar(const float* x, const float* w, float* y, size_t n, float eps);
/// gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
void silu_mul(float* gate, const float* up, size_t n);
/// silu_mul with std::exp (silu_mul uses a vectorized exp within 2 ulp of it).
void silu_mul_scalar(float* gate, const float* up, size_t n);
/// In-place softmax over n >= 1 values (max-subtracted, so large logits do not overflow).
void softmax(float* x, size_t n);

// ---- linear layers ----------------------------------------------------------------------

/// A batch size the kernel tests cover on both sides of (a former GEMM switch-over point;
/// see kernels.cpp for the measurements behind the single SIMD path).
inline constexpr size_t gemm_min_rows = 64;
/// Rows of the batch from which linear() converts weight rows to f32 once per block of
/// batch rows and runs register tiles over them, instead of converting on the fly. Single
/// thread, f16 2048x768: 55-69 GFLOP/s against 35-39 for the on-the-fly kernel at n >= 64;
/// below that the gain was small and end-to-end decode at batch 32 measured no better.
inline constexpr size_t gemm_packed_min_rows = 64;
/// Output rows per unit when a prefill-sized linear layer is split over threads: the AVX-512
/// GEMM's weight panel (detail/float_avx512.hpp). Each chunk streams every batch row once
/// per panel, so narrower chunks end in narrow panels that read as many activations for
/// fewer outputs: with 16-row units the tail panels took 15% of a 2048-token f16 prefill.
inline constexpr size_t prefill_row_unit = 64;

/// y[i][j] = sum_k x[i][k] * w[j][k] for i < n and j in [row_begin, row_end): the output
/// features [row_begin, row_end) of a linear layer, so threads can split a layer by rows.
/// x is [n][w.cols] dense; y has row stride `y_stride` floats. `scratch` holds converted
/// weight tiles; it grows on first use and is reused (one per thread).
void linear(const tensor_view& w, const float* x, size_t n, float* y, size_t y_stride,
            size_t row_begin, size_t row_end, std::vector<float>& scratch);
/// The input x [n][cols] of linear() prepared once for the weights that share it, so that
/// the threads splitting those layers by output rows read one copy: for each weight that
/// takes the int path (an int-dot format at a decode batch, see linear_int), x quantized to
/// 8 bits once per activation block kind (32 values, or 256 for the K formats) instead of
/// once per row range.
struct linear_input {
  const float* x = nullptr;
  size_t n = 0;
  size_t cols = 0;
  quantized_acts q32, q256;  ///< valid when has_q32 / has_q256
  bool has_q32 = false, has_q256 = false;
};
/// Fills `in` for x [n][cols] and the weights `ws` (all with `cols` columns, else
/// std::invalid_argument naming the weight). `x` must outlive the linear() calls on `in`;
/// `in`'s buffers are reused from call to call.
void prepare_linear_input(std::span<const tensor_view* const> ws, const float* x, size_t n,
                          linear_input& in);
/// linear() over a prepared input: the values linear(w, in.x, in.n, ...) gives, bit for bit
/// (the same quantizer on the same rows). A weight `in` was not prepared for runs plain
/// linear() on in.x.
void linear(const tensor_view& w, const linear_input& in, float* y, size_t y_stride,
            size_t row_begin, size_t row_end, std::vector<float>& scratch);
/// linear() over an int-dot block format the decode way: each x row quantized to 8 bits
/// (quantize_acts: per 32 values, per 256 for the K formats), integer dot products on `isa`
/// (quant_isa::scalar is the portable twin). linear() runs this for batches below
/// gemm_packed_min_rows, for larger ones (prefill) where int_prefill() says so (the K formats
/// on AVX-512 VNNI), and for every batch where AVX2 is absent; other prefills unpack weight
/// rows to f32 tiles instead.
void linear_int(quant_isa isa, const tensor_view& w, const float* x, size_t n, float* y,
                size_t y_stride, size_t row_begin, size_t row_end);
/// The instruction sets of the float kernels: avx2 is AVX2+FMA+F16C; avx512 adds
/// AVX-512 F/BW/VL (16-lane tiles, masked tails; q8_0 decode stays on the AVX2 kernel).
enum class float_isa : uint8_t { scalar, avx2, avx512 };
/// The best one this CPU has (decided once).
float_isa best_float_isa();
std::string_view float_isa_name(float_isa isa);
/// linear() on `isa`, which must be available (best_float_isa() or below): what the tests
/// use to compare every path with linear_scalar on one machine.
void linear_on(float_isa isa, const tensor_view& w, const float* x, size_t n, float* y,
               size_t y_stride, size_t row_begin, size_t row_end);
/// The scalar reference of linear() (one dot_row_scalar per output).
void linear_scalar(const tensor_view& w, const float* x, size_t n, float* y, size_t y_stride,
                   size_t row_begin, size_t row_end);

// ---- RoPE -------------------------------------------------------------------------------

/// Per-pair inverse frequencies [head_dim / 2] of RoPE: theta^(-2i / head_dim), divided by
/// `divisors[i]` when given (GGUF `rope_freqs`, which already encodes Llama 3 scaling),
/// else adjusted by `scaling`: linear divides every frequency by `factor` (positions /
/// factor); llama3 keeps high frequencies, divides low ones by `factor` and blends the
/// band between (Hugging Face's `_compute_llama3_parameters`).
std::vector<float> rope_inv_freqs(uint32_t head_dim, float theta, const rope_scaling& scaling,
                                  const float* divisors);
/// cos and sin [head_dim / 2] of `position` * inv_freq[i].
void rope_angles(uint32_t position, const float* inv_freq, size_t pairs, float* cos_out,
                 float* sin_out);
/// cos and sin [head_dim / 2] of `delta` * inv_freq[i] for a signed distance in positions:
/// rope_apply() with these angles moves a vector rotated at position p to position p +
/// delta (RoPE's angle is linear in the position, so the rotations compose exactly; only
/// float rounding differs from rotating at p + delta directly).
void rope_angles_delta(int64_t delta, const float* inv_freq, size_t pairs, float* cos_out,
                       float* sin_out);
/// Rotates one head vector [head_dim] in place: pairs (2i, 2i+1) for `adjacent`, (i,
/// i + head_dim/2) for `halves`, by the angles of rope_angles().
void rope_apply(float* v, uint32_t head_dim, const float* cos_v, const float* sin_v,
                rope_style style);

}  // namespace tokenmill::cpu
