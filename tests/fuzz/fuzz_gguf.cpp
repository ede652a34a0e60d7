/// libFuzzer target: GGUF reading (engine/gguf.hpp) on arbitrary bytes. gguf_file::open
/// takes a path, so each input is written to one memfd per process and opened through
/// /proc/self/fd. Accepted files must also answer the typed getters without crashing.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "engine/gguf.hpp"

namespace {

int memfd() {
  static int fd = [] {
    int f = ::memfd_create("fuzz_gguf", 0);
    if (f < 0) std::abort();
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  int fd = memfd();
  if (::ftruncate(fd, 0) != 0 || ::lseek(fd, 0, SEEK_SET) != 0) std::abort();
  for (size_t done = 0; done < size;) {
    auto n = ::write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
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
