#include "common/heap_release.hpp"

#include <unistd.h>

#include <cstdio>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common/clock.hpp"

namespace tokenmill {

bool heap_release_schedule::due(int64_t now_ns) {
  if (interval_ns_ <= 0) return false;
  if (!started_) {
    started_ = true;
    next_ns_ = now_ns + interval_ns_;
    return false;
  }
  if (now_ns < next_ns_) return false;
  next_ns_ = now_ns + interval_ns_;
  return true;
}

int64_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<int64_t>(resident) * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

heap_release_result release_free_heap() {
  heap_release_result r;
#if defined(__GLIBC__)
  r.supported = true;
  r.rss_before_bytes = resident_bytes();
  const int64_t t0 = now_ns();
  malloc_trim(0);
  r.took_ns = now_ns() - t0;
  r.rss_after_bytes = resident_bytes();
#endif
  return r;
}

}  // namespace tokenmill
