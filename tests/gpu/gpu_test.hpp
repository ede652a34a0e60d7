#pragma once
// Shared by the [gpu] tests: they need a CUDA device and skip (with the reason, as a
// WARN) where there is none — CI builds them wherever nvcc is present and runs them
// without a GPU.
#include <catch2/catch.hpp>

#include <string>

#include "gpu/cuda_backend.hpp"
#include "tests/skip.hpp"

namespace tokenmill::gpu_test {

/// True when a CUDA device is usable; otherwise WARNs why the test is skipped.
inline bool have_device() {
  std::string why;
  if (cuda_device_count(why) > 0) return true;
  ::tokenmill::testing::announce_skip("no CUDA device (" + why + ")");
  return false;
}

}  // namespace tokenmill::gpu_test

/// First statement of every [gpu] test case.
#define TM_REQUIRE_GPU_OR_SKIP()                       \
  do {                                                 \
    if (!::tokenmill::gpu_test::have_device()) return; \
  } while (0)
