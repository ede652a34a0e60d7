#pragma once
/// A view of one weight tensor inside a mapped model file. Weights are never copied:
/// views point into the file mapping that the loaded model keeps alive.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tokenmill {

/// Element types of weight tensors. `q8_0` is GGML's block format: blocks of 32 values,
/// each an f16 scale followed by 32 int8 quants (34 bytes).
enum class dtype : uint8_t { f32, f16, bf16, q8_0 };

/// "f32", "f16", "bf16", "q8_0".
std::string_view dtype_name(dtype t);
/// Bytes of one row of `cols` elements (for q8_0, `cols` must be a multiple of 32).
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
