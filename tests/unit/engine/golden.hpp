#pragma once
/// Where the golden reference data is: $TOKENMILL_GOLDEN_DIR, else tests/data/golden in
/// the source tree (tiny.gguf with llama.cpp's logits and tokenizations, see its README).
/// Tests skip with a message when it is absent.
#include <cstdlib>
#include <filesystem>
#include <string>

namespace tokenmill::test {

/// The golden folder, or "" when it does not exist.
inline std::string golden_dir() {
  std::filesystem::path p;
  if (const char* env = std::getenv("TOKENMILL_GOLDEN_DIR"); env && *env)
    p = env;
  else
    p = std::filesystem::path(TOKENMILL_SOURCE_DIR) / "tests" / "data" / "golden";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(p / "tiny.gguf", ec)) return {};
  return p.lexically_normal().string();
}

}  // namespace tokenmill::test
