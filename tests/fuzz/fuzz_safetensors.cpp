/// libFuzzer target: safetensors reading (engine/safetensors.hpp) on arbitrary bytes, through
/// a memfd (memfd_input.hpp). An accepted file must describe only bytes it holds: every
/// tensor's data lies inside the mapping and its byte size matches its shape and dtype, and
/// every tensor can be found by its name.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "engine/safetensors.hpp"
#include "tests/fuzz/memfd_input.hpp"

// Larger than any byte count a file can have; products are clamped to it.
constexpr unsigned __int128 kHuge = static_cast<unsigned __int128>(1) << 100;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  const std::string& path = fuzz::as_file(data, size);
  auto f = safetensors_file::open(path);
  if (!f) {
    if (f.error().message.empty()) __builtin_trap();  // every refusal says why
    return 0;
  }
  const auto& st = f.value();
  const auto& map = st.mapping();
  const auto* begin = map->data();
  const auto* end = begin + map->size();
  for (const auto& t : st.tensors()) {
    if (st.find(t.name) != &t) __builtin_trap();
    if (t.end < t.begin) __builtin_trap();
    const uint64_t bytes = t.end - t.begin;
    if (bytes > 0 && (t.data < begin || t.data + bytes > end)) __builtin_trap();
    // The shape's elements, counted without overflow, times the dtype's size is the span.
    unsigned __int128 elements = 1;
    for (auto d : t.shape)
      elements = d == 0 || elements == 0 ? 0 : std::min<unsigned __int128>(elements * d, kHuge);
    if (elements * row_bytes(t.type, 1) != bytes) __builtin_trap();
    (void)t.view();
    // Touch the first and last byte, so ASan sees a tensor that reaches past the mapping.
    if (bytes > 0) {
      volatile std::byte first = t.data[0], last = t.data[bytes - 1];
      (void)first;
      (void)last;
    }
  }
  return 0;
}
