#include "engine/tensor.hpp"

#include <cctype>

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
    case dtype::q4_0:
      return "q4_0";
    case dtype::q4_1:
      return "q4_1";
    case dtype::q5_0:
      return "q5_0";
    case dtype::q5_1:
      return "q5_1";
    case dtype::q4_k:
      return "q4_k";
    case dtype::q5_k:
      return "q5_k";
    case dtype::q6_k:
      return "q6_k";
  }
  return "unknown";
}

bool parse_dtype(std::string_view name, dtype& out) {
  for (dtype t : all_dtypes) {
    std::string_view n = dtype_name(t);
    if (n.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < n.size() && same; ++i)
      same = std::tolower(static_cast<unsigned char>(name[i])) == n[i];
    if (same) {
      out = t;
      return true;
    }
  }
  return false;
}

bool is_block_dtype(dtype t) {
  return block_elems(t) > 1;
}

size_t block_elems(dtype t) {
  switch (t) {
    case dtype::f32:
    case dtype::f16:
    case dtype::bf16:
      return 1;
    case dtype::q8_0:
    case dtype::q4_0:
    case dtype::q4_1:
    case dtype::q5_0:
    case dtype::q5_1:
      return 32;
    case dtype::q4_k:
    case dtype::q5_k:
    case dtype::q6_k:
      return 256;
  }
  return 1;
}

size_t block_bytes(dtype t) {
  switch (t) {
    case dtype::f32:
      return 4;
    case dtype::f16:
    case dtype::bf16:
      return 2;
    case dtype::q8_0:
      return 34;  // f16 d, int8 q[32]
    case dtype::q4_0:
      return 18;  // f16 d, q[16] (two 4-bit values per byte)
    case dtype::q4_1:
      return 20;  // f16 d, f16 m, q[16]
    case dtype::q5_0:
      return 22;  // f16 d, qh[4] (fifth bits), q[16]
    case dtype::q5_1:
      return 24;  // f16 d, f16 m, qh[4], q[16]
    case dtype::q4_k:
      return 144;  // f16 d, f16 dmin, scales[12], q[128]
    case dtype::q5_k:
      return 176;  // f16 d, f16 dmin, scales[12], qh[32], q[128]
    case dtype::q6_k:
      return 210;  // ql[128], qh[64], int8 scales[16], f16 d
  }
  return 0;
}

size_t row_bytes(dtype t, uint64_t cols) {
  return cols / block_elems(t) * block_bytes(t);
}

}  // namespace tokenmill
