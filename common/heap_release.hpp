#pragma once
/// Hands the allocator's free memory back to the OS now and then. glibc's malloc keeps
/// freed memory in its arenas (one per thread that met contention, up to 8 per core) and
/// returns it only from the top of a heap: memory one thread frees while others allocate
/// stays resident in its arena, so a long-running node's RSS creeps up under steady
/// traffic while its live heap stays flat. The soak saw it on the head node: over five
/// minutes the live heap went 15.6 -> 13.3 MB while the arenas grew 21.4 -> 24.2 MB (and
/// RSS with them: +1.63% in 8 minutes; +0.73% with this). jemalloc and tcmalloc return such memory
/// on a timer; nodes do the same for glibc with malloc_trim, which gives back every whole free page
/// in every arena. No CAF here.
#include <cstdint>

namespace tokenmill {

/// How often a node releases free heap memory. A release walks each arena's free lists
/// under its lock (well under a millisecond for tens of MB) and costs page faults only
/// for memory that is used again.
inline constexpr double heap_release_interval_s = 10;

/// When a release is due: every `interval_ns` on a monotonic clock, counted from the
/// first call. A late caller gets one release, not a catch-up of the missed ones.
class heap_release_schedule {
 public:
  /// `interval_ns` <= 0: never due.
  explicit heap_release_schedule(int64_t interval_ns) : interval_ns_(interval_ns) {}
  /// Whether a release is due at `now_ns`; when it is, the next one is due an interval
  /// after `now_ns`.
  bool due(int64_t now_ns);

 private:
  int64_t interval_ns_;
  int64_t next_ns_ = 0;
  bool started_ = false;
};

/// What one release did.
struct heap_release_result {
  bool supported = false;  ///< false: not glibc, nothing was done
  int64_t rss_before_bytes = 0;
  int64_t rss_after_bytes = 0;  ///< resident set size after (/proc/self/statm; 0: unknown)
  int64_t took_ns = 0;
};

/// Gives every whole free page of every malloc arena back to the OS (malloc_trim(0)).
heap_release_result release_free_heap();

/// This process's resident set size in bytes (/proc/self/statm), or 0 when unknown.
int64_t resident_bytes();

}  // namespace tokenmill
