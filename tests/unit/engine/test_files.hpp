#pragma once
/// Scratch files for the model-format tests: a path removed at scope exit, and whole-file
/// reads and (truncated) writes for building corrupt inputs.
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace tokenmill::test {

/// A scratch file or directory path, removed (recursively) by the destructor.
struct temp_path {
  std::string path;
  explicit temp_path(const std::string& name)
      : path((std::filesystem::temp_directory_path() /
              ("tokenmill_test_" + std::to_string(::getpid()) + "_" + name))
                 .string()) {}
  ~temp_path() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

inline std::vector<std::byte> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  std::memcpy(out.data(), c.data(), c.size());
  return out;
}

/// Writes the first `n` bytes of `bytes` to `path`.
inline void write_all(const std::string& path, const std::vector<std::byte>& bytes, size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(n));
}

}  // namespace tokenmill::test
