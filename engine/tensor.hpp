#pragma once
/// A view of one weight tensor inside a mapped model file. Weights are never copied:
/// views point into the file mapping that the loaded model keeps alive.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tokenmill {

/// Element types of weight tensors. The q* types are GGML's block formats (the GGUF
/// specification's layouts; engine/cpu/quant.hpp spells each one out): a row is a sequence
/// of blocks of block_elems() values stored in block_bytes() bytes each.
///   q8_0: 32 values: f16 scale, 32 int8 (34 bytes)
///   q4_0, q4_1, q5_0, q5_1: 32 values in 18, 20, 22, 24 bytes
///   q4_k, q5_k, q6_k: 256-value super-blocks in 144, 176, 210 bytes
enum class dtype : uint8_t { f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k };

/// Every dtype, in enum order (for tests and option parsing).
inline constexpr dtype all_dtypes[] = {dtype::f32,  dtype::f16,  dtype::bf16, dtype::q8_0,
                                       dtype::q4_0, dtype::q4_1, dtype::q5_0, dtype::q5_1,
                                       dtype::q4_k, dtype::q5_k, dtype::q6_k};

/// "f32", "f16", "bf16", "q8_0", "q4_0", ..., "q6_k".
std::string_view dtype_name(dtype t);
/// The dtype named `name` (as dtype_name() spells it, case-insensitive), if any.
bool parse_dtype(std::string_view name, dtype& out);
/// Whether `t` is a block format (q8_0 and the q4/q5/q6 types).
bool is_block_dtype(dtype t);
/// Values per block (1 for f32/f16/bf16, 32 or 256 for block formats).
size_t block_elems(dtype t);
/// Bytes per block (the element size for f32/f16/bf16).
size_t block_bytes(dtype t);
/// Bytes of one row of `cols` elements (for block formats, `cols` must be a multiple of
/// block_elems()).
size_t row_bytes(dtype t, uint64_t cols);

/// A row-major matrix [rows][cols] (a vector has rows = 1). For weights of linear layers,
/// rows are output features and cols input features (GGUF ne0 = cols, ne1 = rows; HF shape
/// [rows, cols]) — the same bytes in both formats.
struct tensor_view {
  std::string name;  ///< name in the file, for error messages
  dtype type = dtype::f32;
  uint64_t rows = 0;
  uint64_t cols = 0;
  const std::byte* data = nullptr;  ///< nullptr: absent (an optional tensor such as a bias)

  bool present() const { return data != nullptr; }
  const std::byte* row(uint64_t r) const { return data + r * row_bytes(type, cols); }
};

}  // namespace tokenmill
