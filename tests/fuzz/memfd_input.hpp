#pragma once
/// For fuzz targets whose parser takes a path: each input goes into one memfd per process,
/// opened through /proc/self/fd (no file system traffic, nothing left behind).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace tokenmill::fuzz {

/// Replaces the process's memfd contents with `data` and returns its path.
inline const std::string& as_file(const uint8_t* data, size_t size) {
  static const int fd = [] {
    int f = ::memfd_create("tokenmill_fuzz", 0);
    if (f < 0) std::abort();
    return f;
  }();
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (::ftruncate(fd, 0) != 0 || ::lseek(fd, 0, SEEK_SET) != 0) std::abort();
  for (size_t done = 0; done < size;) {
    auto n = ::write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  return path;
}

}  // namespace tokenmill::fuzz
