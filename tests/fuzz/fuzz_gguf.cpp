/// libFuzzer target: GGUF reading (engine/gguf.hpp) on arbitrary bytes. gguf_file::open
/// takes a path, so each input goes through a memfd (memfd_input.hpp). Accepted files must also
/// answer the typed getters without crashing.
#include <cstddef>
#include <cstdint>

#include "engine/gguf.hpp"
#include "tests/fuzz/memfd_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  const std::string& path = fuzz::as_file(data, size);
  auto f = gguf_file::open(path);
  if (!f) return 0;
  const auto& g = f.value();
  for (const auto& [key, value] : g.metadata()) {
    (void)g.get_u32(key);
    (void)g.get_i32(key);
    (void)g.get_f32(key);
    (void)g.get_bool(key);
    (void)g.get_string(key);
    (void)g.get_strings(key);
    (void)g.get_f32s(key);
    (void)g.get_i32s(key);
  }
  for (const auto& t : g.tensors())
    (void)t.view();
  return 0;
}
