#include "engine/tensor.hpp"

namespace tokenmill {

std::string_view dtype_name(dtype t) {
  switch (t) {
    case dtype::f32:
      return "f32";
    case dtype::f16:
      return "f16";
    case dtype::bf16:
      return "bf16";
    case dtype::q8_0:
      return "q8_0";
  }
  return "unknown";
}

size_t row_bytes(dtype t, uint64_t cols) {
  switch (t) {
    case dtype::f32:
      return cols * 4;
    case dtype::f16:
    case dtype::bf16:
      return cols * 2;
    case dtype::q8_0:
      return cols / 32 * 34;
  }
  return 0;
}

}  // namespace tokenmill
