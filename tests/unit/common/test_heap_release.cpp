#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/heap_release.hpp"
#include "tests/skip.hpp"

using namespace tokenmill;

TEST_CASE("heap_release_schedule is due once per interval from its first call", "[heap_release]") {
  heap_release_schedule s(10);
  CHECK_FALSE(s.due(100));  // the first call starts the clock
  CHECK_FALSE(s.due(105));
  CHECK_FALSE(s.due(109));
  CHECK(s.due(110));
  CHECK_FALSE(s.due(110));
  CHECK_FALSE(s.due(119));
  CHECK(s.due(120));
}

TEST_CASE("heap_release_schedule does not catch up on missed intervals", "[heap_release]") {
  heap_release_schedule s(10);
  CHECK_FALSE(s.due(0));
  CHECK(s.due(1000));  // a hundred intervals late: one release
  CHECK_FALSE(s.due(1001));
  CHECK_FALSE(s.due(1009));
  CHECK(s.due(1010));
}

TEST_CASE("heap_release_schedule with no interval is never due", "[heap_release]") {
  for (int64_t interval : {int64_t{0}, int64_t{-5}}) {
    heap_release_schedule s(interval);
    for (int64_t t : {int64_t{0}, int64_t{1}, int64_t{1'000'000'000'000}})
      CHECK_FALSE(s.due(t));
  }
}

TEST_CASE("release_free_heap gives freed memory below a live block back to the OS",
          "[heap_release]") {
#if !defined(__GLIBC__)
  TM_SKIP("release_free_heap uses glibc's malloc_trim; this is not glibc");
#else
  // 64 MiB in 1 KiB blocks (below the mmap threshold: heap memory), touched, then a live
  // block above them so that free() cannot shrink the heap from its top: freed, the 64
  // MiB stay resident until released.
  constexpr size_t block = 1024, count = 64 * 1024;
  std::vector<void*> blocks(count);
  bool allocated = true;
  for (auto& p : blocks) {
    p = std::malloc(block);
    if (p == nullptr)
      allocated = false;
    else
      std::memset(p, 0x5a, block);
  }
  REQUIRE(allocated);
  void* pin = std::malloc(block);
  REQUIRE(pin != nullptr);
  std::memset(pin, 1, block);
  for (auto* p : blocks)
    std::free(p);
  const int64_t held = resident_bytes();
  REQUIRE(held > 0);
  auto r = release_free_heap();
  CHECK(r.supported);
  CHECK(r.rss_before_bytes > 0);
  CHECK(r.took_ns >= 0);
  INFO("resident before " << r.rss_before_bytes << " B, after " << r.rss_after_bytes << " B");
  CHECK(r.rss_after_bytes <= held - int64_t{32} * 1024 * 1024);
  std::free(pin);
#endif
}
