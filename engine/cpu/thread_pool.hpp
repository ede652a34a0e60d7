#pragma once
/// A fixed pool of compute threads for the CPU engine, which several callers (the engines of
/// one process: a prefill worker's and a decode worker's) can use at once. parallel_for
/// posts a job: its index range is split into chunks that the caller and the workers that
/// join take from the job's counter, and it returns when all are done. Each caller works
/// on its own job; idle workers join the open job of the highest priority and, at chunk
/// boundaries, move to a job of higher priority when one opens (issue 21 item 4: compute
/// threads move to whichever worker has work, decode steps first). A caller waits only for
/// the workers that joined its own job, each finishing its current chunk, never for
/// another caller's job. Workers join only while fewer than threads() threads compute
/// (callers with a job included), and step back at a chunk boundary when more do, so that
/// callers busy at once never oversubscribe the cores; in another caller's guided job a worker
/// takes chunks paced to ~250 us, so that it steps back soon (pool_policy). Idle workers that
/// could join spin briefly (the next parallel_for of a forward pass usually follows within
/// microseconds), then sleep on a condition variable so an idle pool costs no CPU; while
/// the pool's threads all compute they sleep at once and posts do not wake them.
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace tokenmill::cpu {

/// How eagerly idle workers join a job: the highest open priority first.
enum class job_priority : uint8_t {
  normal = 0,  ///< prefill chunks, KV moves: throughput work
  high = 1,    ///< decode steps: every running stream waits for them
};

class thread_pool {
 public:
  /// `threads` participants per job including its caller (threads - 1 workers are
  /// started; 0 = std::thread::hardware_concurrency()), and `callers` that may run jobs at
  /// once (at least 1; more wait for a free caller slot). A pool shared by N engines
  /// takes N callers.
  explicit thread_pool(uint32_t threads, uint32_t callers = 1);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  /// Distinct thread indices: callers plus workers. Tasks get a thread index in
  /// [0, size()) that no other thread uses while the task runs (for per-thread scratch):
  /// callers take [0, callers) for the duration of their call, workers have the rest.
  uint32_t size() const { return callers_ + workers(); }
  /// Threads that can work on one job: the workers and its caller.
  uint32_t threads() const { return workers() + 1; }
  /// Callers that can run jobs at once.
  uint32_t callers() const { return callers_; }

  /// Workers asleep now (waiting for a post or a free compute slot). For tests and figures.
  uint32_t sleeping_workers() const { return sleepers_.load(); }
  /// Times a sleeping worker was woken to look for a job, since construction. For tests and
  /// figures: a wake-up while the pool's threads all compute would be a context switch on a
  /// busy core for nothing (pool_policy::should_wake).
  uint64_t worker_wakeups() const { return wakeups_.load(std::memory_order_relaxed); }

  /// Counts the calling thread as computing, for the workers' budget (threads()), from
  /// construction to destruction: an engine call whose serial work between parallel_for
  /// calls takes a core too. Without it a caller counts only inside parallel_for, and a
  /// worker would join another caller's job in each short gap and step back at the next
  /// post, thrashing. parallel_for calls inside count no second time; nested scopes are
  /// no-ops. Not movable; use on one thread.
  class busy_scope {
   public:
    explicit busy_scope(thread_pool& pool);
    ~busy_scope();
    busy_scope(const busy_scope&) = delete;
    busy_scope& operator=(const busy_scope&) = delete;

   private:
    thread_pool* pool_ = nullptr;  ///< null: nested, nothing to undo
    const thread_pool* outer_ = nullptr;
  };

  /// Calls fn(begin, end, thread) over disjoint chunks [begin, end) of [0, count), each at
  /// most `grain` long (grain 0 = split evenly across threads()), and blocks until all have
  /// run. `thread` identifies the participant (see size()). A call from inside a task, or
  /// a range of one chunk, runs inline on the caller. `fn` must not throw.
  template <class Fn>
  void parallel_for(size_t count, size_t grain, Fn&& fn,
                    job_priority priority = job_priority::normal) {
    run(count, grain, mode::plain, priority, &fn, thunk<Fn>);
  }

  /// parallel_for with chunks that shrink as the range runs out (guided scheduling): each
  /// claim takes 1 / (2 * threads()) of what is left, rounded down to a multiple of `unit`
  /// (at least `unit`; only the range's last chunk may be shorter). Chunks start at
  /// multiples of `unit`. Large first chunks keep the claims few; small last ones keep the
  /// participants from waiting long on one another's final chunk. Where parallel_for would
  /// run inline (no workers, a call from a task, count <= unit), the range is one chunk.
  template <class Fn>
  void parallel_for_guided(size_t count, size_t unit, Fn&& fn,
                           job_priority priority = job_priority::normal) {
    run(count, unit == 0 ? 1 : unit, mode::guided, priority, &fn, thunk<Fn>);
  }

  /// parallel_for with one chunk per thread, bounds at multiples of `unit` (besides the
  /// range's end): the caller's chunk sized from the pace of the caller and the workers
  /// measured on the earlier split jobs of its caller slot (pool_policy::split_caller_rows),
  /// the workers' chunks equal. For a decode step's GEMVs, whose threads wait for each
  /// other at every job. Where parallel_for would run inline, the range is one chunk.
  template <class Fn>
  void parallel_for_split(size_t count, size_t unit, Fn&& fn,
                          job_priority priority = job_priority::normal) {
    run(count, unit == 0 ? 1 : unit, mode::split, priority, &fn, thunk<Fn>);
  }

 private:
  using call_fn = void (*)(void*, size_t, size_t, uint32_t);
  enum class mode : uint8_t { plain, guided, split };
  template <class Fn>
  static void thunk(void* ctx, size_t b, size_t e, uint32_t t) {
    (*static_cast<std::remove_reference_t<Fn>*>(ctx))(b, e, t);
  }

  /// One caller slot's job. The caller writes the fields, then publishes `state`.
  struct alignas(64) job {
    /// [63:32] generation, bit 31 closed, [30:0] workers that joined. The caller closes
    /// the job when it runs out of chunks and then waits only for workers that joined, so
    /// a worker the OS has not scheduled yet never delays a parallel_for.
    std::atomic<uint64_t> state{0};
    std::atomic<size_t> next{0};       ///< first unclaimed index
    std::atomic<uint8_t> priority{0};  ///< job_priority, read by workers choosing a job
    uint64_t generation = 0;           ///< caller side
    void* ctx = nullptr;
    call_fn call = nullptr;
    size_t count = 0;
    size_t grain = 1;
    bool guided = false;
    bool split = false;
    double split_ratio = 1;  ///< caller side: pool_policy::update_split_ratio's estimate
    /// A split job's workers: rows computed and when the last chunk ended (now_ns), for the
    /// caller's estimate of their pace. A line of their own, as `exited` has: the caller
    /// spins on `exited`, and a worker's writes to a line the caller keeps reading cost a
    /// cross-core transfer each.
    alignas(64) std::atomic<uint64_t> worker_rows{0};
    std::atomic<uint64_t> worker_end_ns{0};
    alignas(64) std::atomic<uint32_t> exited{0};  ///< joined workers that have left the job
  };

  uint32_t workers() const { return static_cast<uint32_t>(workers_.size()); }
  void run(size_t count, size_t grain, mode how, job_priority priority, void* ctx, call_fn call);
  /// Claims the next chunk of `j`, of a guided job at most `cap` long; false when none is left.
  bool claim(job& j, size_t& begin, size_t& end, size_t cap = SIZE_MAX) const;
  /// Why work() returned.
  enum class left : uint8_t {
    done,          ///< no chunk left
    stepped_back,  ///< more threads computing than threads(): its compute slot released
    moved,         ///< a job of higher priority is open
  };
  /// Runs chunks of `j` as thread `thread` until none is left or, for a `worker`, the pool
  /// has more threads computing than threads() or a job of higher priority is open.
  left work(job& j, uint32_t thread, bool worker);
  /// Takes a compute slot for a worker; false when threads() are computing already.
  bool reserve();
  /// The open job with the highest priority (the lowest slot among equals), or -1; slots
  /// in `skip` are left out.
  int best_open(uint64_t skip) const;
  /// True when an open job has a priority above `p`.
  bool higher_open(uint8_t p) const;
  uint32_t acquire_slot();
  void release_slot(uint32_t slot);
  void worker_loop(uint32_t thread);
  /// Wakes the sleeping workers (they recheck under mutex_).
  void wake_workers();
  /// Uncounts a computing caller and wakes a sleeping worker when it can now join an open job.
  void release_compute();

  uint32_t callers_ = 1;
  std::unique_ptr<job[]> jobs_;  ///< one per caller slot
  std::vector<std::thread> workers_;
  std::atomic<bool> stop_{false};
  // The hot atomics sit on cache lines of their own, grouped by who writes them: a line
  // that a spinning worker reads and a caller writes costs a cross-core transfer per
  // access (~350 ns one way on the 2-vCPU VM), and a parallel_for makes several.
  /// Slots whose job is open to workers, a bit each, and a count bumped whenever a job is
  /// posted: callers write them, idle workers spin on them.
  alignas(64) std::atomic<uint64_t> open_{0};
  std::atomic<uint64_t> epoch_{0};
  /// Threads computing: callers with a job posted, and joined workers. Workers join only
  /// while it is below threads(), so with several callers busy the pool does not run more
  /// threads than it has (a 2-core machine with a prefill and a decode step at once runs
  /// one thread each, as split pools would, instead of three on two cores).
  alignas(64) std::atomic<uint32_t> active_{0};
  alignas(64) std::atomic<uint64_t> slots_{0};     ///< caller slots in use, a bit each
  std::atomic<uint32_t> slot_waiters_{0};          ///< callers waiting for a caller slot
  alignas(64) std::atomic<uint32_t> sleepers_{0};  ///< workers asleep on wake_
  std::atomic<uint64_t> wakeups_{0};               ///< worker_wakeups()
  alignas(64) std::mutex mutex_;                   ///< guards sleeping and waking
  std::condition_variable wake_;                   ///< workers: a job was posted, or stop
  std::condition_variable done_;                   ///< callers: a worker left a job
  std::condition_variable slot_free_;              ///< callers waiting for a caller slot
};

/// One engine's use of a pool, its own or one shared by the engines of a process: the
/// engine sets the priority of what it computes (a decode step, a prefill chunk) and its
/// parallel_for calls carry it.
class pool_lane {
 public:
  explicit pool_lane(std::shared_ptr<thread_pool> pool) : pool_(std::move(pool)) {}

  /// As thread_pool's.
  uint32_t size() const { return pool_->size(); }
  uint32_t threads() const { return pool_->threads(); }
  /// The priority of this lane's jobs from now on.
  void set_priority(job_priority p) { priority_ = p; }
  /// thread_pool::busy_scope for this lane's pool.
  [[nodiscard]] thread_pool::busy_scope busy() { return thread_pool::busy_scope(*pool_); }

  template <class Fn>
  void parallel_for(size_t count, size_t grain, Fn&& fn) {
    pool_->parallel_for(count, grain, std::forward<Fn>(fn), priority_);
  }
  template <class Fn>
  void parallel_for_guided(size_t count, size_t unit, Fn&& fn) {
    pool_->parallel_for_guided(count, unit, std::forward<Fn>(fn), priority_);
  }
  template <class Fn>
  void parallel_for_split(size_t count, size_t unit, Fn&& fn) {
    pool_->parallel_for_split(count, unit, std::forward<Fn>(fn), priority_);
  }

 private:
  std::shared_ptr<thread_pool> pool_;
  job_priority priority_ = job_priority::normal;
};

}  // namespace tokenmill::cpu
