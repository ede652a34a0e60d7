#pragma once
/// A fixed pool of compute threads for the CPU engine: parallel_for splits an index range
/// into chunks that the workers and the calling thread take from a shared counter, and
/// returns when all are done. Idle workers spin briefly (the next parallel_for of a forward
/// pass usually follows within microseconds), then sleep on a condition variable so an
/// idle engine costs no CPU. Workers that wake late find the job closed and skip it.
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace tokenmill::cpu {

class thread_pool {
 public:
  /// `threads` participants including the caller of parallel_for (so threads - 1 workers
  /// are started); 0 = std::thread::hardware_concurrency().
  explicit thread_pool(uint32_t threads);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  /// Participants, including the calling thread; thread indices passed to tasks are
  /// in [0, size()).
  uint32_t size() const { return static_cast<uint32_t>(workers_.size()) + 1; }

  /// Calls fn(begin, end, thread) over disjoint chunks [begin, end) of [0, count), each at
  /// most `grain` long (grain 0 = split evenly across threads), and blocks until all have
  /// run. `thread` identifies the participant (for per-thread scratch). A call from inside
  /// a task, or a range of one chunk, runs inline on the caller. Concurrent callers are
  /// serialized. `fn` must not throw.
  template <class Fn>
  void parallel_for(size_t count, size_t grain, Fn&& fn) {
    run(count, grain, false, &fn, thunk<Fn>);
  }

  /// parallel_for with chunks that shrink as the range runs out (guided scheduling): each
  /// claim takes 1 / (2 * size()) of what is left, rounded down to a multiple of `unit`
  /// (at least `unit`; only the range's last chunk may be shorter). Chunks start at
  /// multiples of `unit`. Large first chunks keep the claims few; small last ones keep the
  /// participants from waiting long on one another's final chunk. Where parallel_for would
  /// run inline (no workers, a call from a task, count <= unit), the range is one chunk.
  template <class Fn>
  void parallel_for_guided(size_t count, size_t unit, Fn&& fn) {
    run(count, unit == 0 ? 1 : unit, true, &fn, thunk<Fn>);
  }

 private:
  using call_fn = void (*)(void*, size_t, size_t, uint32_t);
  template <class Fn>
  static void thunk(void* ctx, size_t b, size_t e, uint32_t t) {
    (*static_cast<std::remove_reference_t<Fn>*>(ctx))(b, e, t);
  }
  void run(size_t count, size_t grain, bool guided, void* ctx, call_fn call);
  /// Claims the next chunk of the current job; false when none is left.
  bool claim(size_t& begin, size_t& end);
  void work(uint32_t thread);
  void worker_loop(uint32_t thread);

  std::vector<std::thread> workers_;
  std::mutex submit_;  ///< one parallel_for at a time
  std::mutex mutex_;   ///< guards sleeping and waking
  std::condition_variable wake_;
  std::condition_variable done_;
  /// [63:32] job generation, bit 31 closed, [30:0] workers that joined the job. The caller
  /// closes the job when it runs out of chunks and then waits only for workers that
  /// joined, so a worker the OS has not scheduled yet never delays a parallel_for.
  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> exited_{0};  ///< joined workers that have finished the job
  std::atomic<size_t> next_{0};      ///< first unclaimed index of the current job
  std::atomic<bool> stop_{false};
  uint64_t generation_ = 0;  ///< caller side, under submit_
  // The current job; written by the caller before state_ is published.
  void* ctx_ = nullptr;
  call_fn call_ = nullptr;
  size_t count_ = 0;
  size_t grain_ = 1;
  bool guided_ = false;
};

}  // namespace tokenmill::cpu
