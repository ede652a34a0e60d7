#include "transport/ucx_transport.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <source_location>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <ucp/api/ucp.h>

namespace tokenmill {

namespace {

/// This host's identity for pool descriptors: the running kernel's boot id (the same for
/// every process and network namespace of the host), else the host name.
std::string host_identity() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (std::getline(in, id) && !id.empty()) return id;
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) == 0) return name;
  return {};
}

using clock_type = std::chrono::steady_clock;

/// The one place a ucs_status_t becomes an error_info (STYLE.md §7).
error_info ucs_error(ucs_status_t st, std::string_view what,
                     std::source_location loc = std::source_location::current()) {
  errc code = errc::unavailable;
  switch (st) {
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT:
      code = errc::timeout;
      break;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_INVALID_ADDR:
      code = errc::internal;
      break;
    default:
      break;
  }
  const char* file = loc.file_name();
  if (const char* slash = std::strrchr(file, '/')) file = slash + 1;
  return {code, fmt::format("ucx: {}: {} ({}:{})", what, ucs_status_string(st), file, loc.line())};
}

/// RAII deleters for every UCX handle.
struct context_deleter {
  void operator()(ucp_context_h c) const { ucp_cleanup(c); }
};
struct worker_deleter {
  void operator()(ucp_worker_h w) const { ucp_worker_destroy(w); }
};
struct config_deleter {
  void operator()(ucp_config_t* c) const { ucp_config_release(c); }
};
struct mem_deleter {
  ucp_context_h context = nullptr;
  void operator()(ucp_mem_h m) const { ucp_mem_unmap(context, m); }
};
struct rkey_deleter {
  void operator()(ucp_rkey_h k) const { ucp_rkey_destroy(k); }
};
struct rkey_buffer_deleter {
  void operator()(void* b) const { ucp_rkey_buffer_release(b); }
};
struct address_deleter {
  ucp_worker_h worker = nullptr;
  void operator()(ucp_address_t* a) const { ucp_worker_release_address(worker, a); }
};

using context_ptr = std::unique_ptr<ucp_context, context_deleter>;
using worker_ptr = std::unique_ptr<ucp_worker, worker_deleter>;
using config_ptr = std::unique_ptr<ucp_config_t, config_deleter>;
using mem_ptr = std::unique_ptr<ucp_mem, mem_deleter>;
using rkey_ptr = std::unique_ptr<ucp_rkey, rkey_deleter>;
using rkey_buffer_ptr = std::unique_ptr<void, rkey_buffer_deleter>;
using address_ptr = std::unique_ptr<ucp_address_t, address_deleter>;

/// Closes a file descriptor on destruction.
struct fd_guard {
  int fd = -1;
  fd_guard() = default;
  explicit fd_guard(int f) : fd(f) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

/// Device bytes staged per piece of a write (whole blocks; at least one block).
constexpr size_t piece_bytes = size_t{1} << 20;
/// The progress thread wakes at least this often in wake-up mode.
constexpr auto max_wait = std::chrono::milliseconds(1000);

/// A contiguous byte range of a write: `bytes` at `offset` into the local pool's range, put
/// to the peer's address `remote`.
struct segment {
  size_t offset = 0;
  size_t bytes = 0;
  uint64_t remote = 0;
};

/// A registered pool: the address range callers name it by and, for a device pool this UCX
/// cannot map, the host mirror that is mapped in its place.
struct registered_pool {
  const std::byte* begin = nullptr;
  const std::byte* end = nullptr;
  ucs_memory_type_t memory_type = UCS_MEMORY_TYPE_HOST;  ///< of what puts read when in place
  std::unique_ptr<pool_memory> staging;                  ///< the host mirror, or null
  std::byte* mirror() const { return staging ? staging->bytes().data() : nullptr; }
};

/// Block ids as runs for log lines: "0-3,7" (the first 16 runs).
std::string block_list(const std::vector<block_id>& ids) {
  std::string out;
  size_t runs = 0;
  for (size_t i = 0; i < ids.size();) {
    size_t n = 1;
    while (i + n < ids.size() && ids[i + n] == ids[i] + n)
      ++n;
    if (++runs > 16) {
      out += ",...";
      break;
    }
    if (!out.empty()) out += ',';
    out += n == 1 ? fmt::format("{}", ids[i]) : fmt::format("{}-{}", ids[i], ids[i] + n - 1);
    i += n;
  }
  return out;
}

int64_t ms_since(clock_type::time_point t, clock_type::time_point now) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - t).count();
}

}  // namespace

struct ucx_transport::impl {
  /// Closes an endpoint without progressing (no re-entrancy): the close request is
  /// finished later by the loop.
  struct ep_closer {
    impl* owner;  // no initializer: keeps it default-constructible inside incomplete impl
    bool force;   ///< a failed endpoint cannot flush: close it without telling the peer
    void operator()(ucp_ep_h ep) const {
      if (void* req = owner->close_endpoint(ep, force)) owner->close_reqs_.push_back(req);
    }
  };
  using ep_ptr = std::unique_ptr<ucp_ep, ep_closer>;

  /// One peer worker: its endpoint and the rkeys unpacked for it.
  struct endpoint_state {
    impl* owner = nullptr;
    std::vector<uint8_t> address;
    std::map<std::vector<uint8_t>, rkey_ptr> rkeys;  ///< by descriptor remote_key bytes
    ep_ptr ep;
    bool failed = false;
    bool peer_errors = true;  ///< created with UCP_ERR_HANDLING_MODE_PEER
    /// Writes whose puts are all issued, waiting for the flush at the end of this iteration.
    std::vector<uint64_t> flush_ready;
  };

  /// A failed endpoint on its way out: force-closed by the loop, freed once UCX has
  /// finished the close (nothing in UCX refers to the state after that).
  struct dead_endpoint {
    std::unique_ptr<endpoint_state> state;
    void* close_req = nullptr;  ///< the force close, while UCX has not finished it
  };

  /// What the staging thread copies for one write of a staged (device) pool.
  struct staging_job {
    uint64_t op = 0;
    const pool_memory* source = nullptr;
    std::byte* mirror = nullptr;  ///< the mirror at the source's offset 0
    size_t block_bytes = 0;
    std::vector<segment> segments;
    std::atomic<bool> cancelled{false};  ///< the write ended (failed): stop copying
  };

  /// A write from write() to completion: queued (waiting_), then started (active_).
  struct write_op {
    uint64_t id = 0;
    bool internal = false;  ///< connect()'s flush: no caller, not in stats or the window
    worker_id peer = 0;
    std::vector<uint8_t> address;
    bool same_host = false;  ///< the peer's pool is on this host: no peer error handling
    std::vector<uint8_t> remote_key;
    const std::byte* put_base = nullptr;  ///< what puts read: the pool in place, or its mirror
    const pool_memory* staged = nullptr;  ///< set: copy device -> mirror (put_base) first
    ucs_memory_type_t memory_type = UCS_MEMORY_TYPE_HOST;
    size_t block_bytes = 0;
    std::vector<segment> segments;
    std::vector<block_id> dst;
    uint64_t bytes = 0;
    completion done;
    clock_type::time_point deadline;
    // Once started:
    endpoint_state* ep = nullptr;
    ucp_rkey_h rkey = nullptr;
    clock_type::time_point started;
    clock_type::time_point last_progress;  ///< start, puts issued, or a put completed
    bool stall_reported = false;
    std::shared_ptr<staging_job> job;
  };

  /// A unit of work for the progress thread; `cancelled` is true when the transport
  /// stops before it ran.
  using task = std::function<void(bool cancelled)>;

  ucx_config cfg_;
  bool cuda_supported_ = false;
  std::string host_;  ///< this host's identity (pool_descriptor::host)
  context_ptr context_;
  worker_ptr worker_;
  std::vector<uint8_t> worker_address_;
  int worker_efd_ = -1;
  fd_guard wake_fd_;

  std::mutex mutex_;  ///< guards queue_, stop_, pools_
  std::deque<task> queue_;
  bool stop_ = false;
  std::vector<std::unique_ptr<registered_pool>> pools_;  ///< never removed: stable pointers

  // Counters and gauges (stats()); written by the progress thread, except writes_failed_.
  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> writes_completed_{0};
  std::atomic<uint64_t> writes_failed_{0};
  std::atomic<uint64_t> timeouts_{0};
  std::atomic<uint64_t> stalls_{0};
  std::atomic<uint32_t> writes_in_flight_{0};
  std::atomic<uint32_t> writes_queued_{0};
  std::atomic<uint64_t> bytes_in_flight_{0};

  // Progress thread only.
  std::vector<mem_ptr> mems_;
  std::map<std::vector<uint8_t>, std::unique_ptr<endpoint_state>> eps_;
  std::vector<dead_endpoint> dead_eps_;
  std::deque<std::unique_ptr<write_op>> waiting_;  ///< FIFO: deadlines ascend
  std::unordered_map<uint64_t, std::unique_ptr<write_op>> active_;
  std::unordered_map<void*, uint64_t> put_reqs_;                 ///< in-flight put -> op id
  std::unordered_map<void*, std::vector<uint64_t>> flush_reqs_;  ///< in-flight flush -> ops
  std::vector<endpoint_state*> flush_eps_;  ///< endpoints with flush_ready writes
  std::vector<void*> close_reqs_;
  uint64_t next_op_ = 1;

  // The staging thread (device -> mirror copies) and its queue.
  std::mutex staging_mutex_;
  std::condition_variable staging_cv_;
  std::deque<std::shared_ptr<staging_job>> staging_queue_;
  bool staging_stop_ = false;
  std::thread staging_thread_;

  std::thread thread_;

  ~impl() {
    {
      std::lock_guard lock{staging_mutex_};
      staging_stop_ = true;
    }
    staging_cv_.notify_all();
    if (staging_thread_.joinable()) staging_thread_.join();
    {
      std::lock_guard lock{mutex_};
      stop_ = true;
    }
    wake();
    if (thread_.joinable()) thread_.join();
  }

  void wake() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_.fd, &one, sizeof(one));
  }

  void submit(task t) {
    bool run = true;
    {
      std::lock_guard lock{mutex_};
      if (stop_)
        run = false;
      else
        queue_.push_back(std::move(t));
    }
    if (run)
      wake();
    else
      t(true);
  }

  kv_transport_stats stats() const {
    kv_transport_stats s;
    s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
    s.writes_completed = writes_completed_.load(std::memory_order_relaxed);
    s.writes_failed = writes_failed_.load(std::memory_order_relaxed);
    s.timeouts = timeouts_.load(std::memory_order_relaxed);
    s.stalls = stalls_.load(std::memory_order_relaxed);
    s.writes_in_flight = writes_in_flight_.load(std::memory_order_relaxed);
    s.writes_queued = writes_queued_.load(std::memory_order_relaxed);
    s.bytes_in_flight = bytes_in_flight_.load(std::memory_order_relaxed);
    return s;
  }

  /// Counts a write's outcome (any thread).
  void count(const error_info& err, uint64_t bytes) {
    if (err) {
      writes_failed_.fetch_add(1, std::memory_order_relaxed);
      if (err.code == errc::timeout) timeouts_.fetch_add(1, std::memory_order_relaxed);
    } else {
      writes_completed_.fetch_add(1, std::memory_order_relaxed);
      bytes_written_.fetch_add(bytes, std::memory_order_relaxed);
    }
  }

  /// The registered pool that contains `range`, or null.
  const registered_pool* find_pool(std::span<const std::byte> range) {
    std::lock_guard lock{mutex_};
    for (auto& r : pools_)
      if (range.data() >= r->begin && range.data() + range.size() <= r->end) return r.get();
    return nullptr;
  }

  // ---------------------------------------------------------------- staging thread
  void run_staging() {
    for (;;) {
      std::shared_ptr<staging_job> job;
      {
        std::unique_lock lock{staging_mutex_};
        staging_cv_.wait(lock, [this] { return staging_stop_ || !staging_queue_.empty(); });
        if (staging_stop_) return;  // the progress thread fails what is left
        job = std::move(staging_queue_.front());
        staging_queue_.pop_front();
      }
      stage(*job);
    }
  }

  /// Copies a staged write's blocks device -> mirror in pieces of at most piece_bytes (whole
  /// blocks, at least one) and hands each piece's puts to the progress thread as soon as it
  /// is copied. This is the double buffering: while the network reads piece i out of the
  /// mirror, this thread copies piece i+1 into another part of it, so device copies and
  /// network transfer overlap instead of adding up. Only the written blocks are copied.
  void stage(staging_job& job) {
    const size_t cap = std::max<size_t>(1, piece_bytes / job.block_bytes) * job.block_bytes;
    std::vector<segment> piece;
    size_t filled = 0;
    for (size_t i = 0; i < job.segments.size(); ++i) {
      const segment& s = job.segments[i];
      for (size_t copied = 0; copied < s.bytes;) {
        if (job.cancelled.load(std::memory_order_relaxed)) return;
        // Whole blocks: cap, filled and every segment are multiples of block_bytes.
        const size_t n = std::min(s.bytes - copied, cap - filled);
        const segment part{s.offset + copied, n, s.remote + copied};
        try {
          job.source->copy_out(part.offset, job.mirror + part.offset, n);
        } catch (const std::exception& e) {
          error_info err{errc::internal,
                         fmt::format("ucx: copying {} B of a device pool to its host staging "
                                     "failed: {}",
                                     n, e.what())};
          submit([this, id = job.op, err](bool cancelled) {
            if (!cancelled) finish(id, err);
          });
          return;
        }
        piece.push_back(part);
        filled += n;
        copied += n;
        const bool last = i + 1 == job.segments.size() && copied == s.bytes;
        if (filled == cap || last) {
          submit([this, id = job.op, segs = std::move(piece), last](bool cancelled) {
            if (!cancelled) on_piece(id, segs, last);
          });
          piece.clear();
          filled = 0;
        }
      }
    }
  }

  // ---------------------------------------------------------------- progress thread
  void run() {
    for (;;) {
      std::deque<task> tasks;
      bool stop = false;
      {
        std::lock_guard lock{mutex_};
        tasks.swap(queue_);
        stop = stop_;
      }
      for (auto& t : tasks)
        t(false);
      if (stop) break;
      admit();
      issue_flushes();
      auto next = check_deadlines();
      reap_dead_endpoints();
      if (cfg_.busy_poll) {
        ucp_worker_progress(worker_.get());
        continue;
      }
      while (ucp_worker_progress(worker_.get()) != 0) {
      }
      if (can_admit()) continue;  // completions made room in the window
      ucs_status_t st = ucp_worker_arm(worker_.get());
      if (st == UCS_ERR_BUSY) continue;
      // Wake on the queue's eventfd, worker events, or the nearest deadline or stall check.
      auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - clock_type::now());
      int timeout_ms = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, max_wait.count()));
      if (st != UCS_OK || !close_reqs_.empty() || !dead_eps_.empty())
        timeout_ms = std::min(timeout_ms, 10);
      pollfd fds[2] = {{wake_fd_.fd, POLLIN, 0}, {worker_efd_, POLLIN, 0}};
      int n = ::poll(fds, st == UCS_OK ? 2 : 1, timeout_ms);
      if (n > 0 && (fds[0].revents & POLLIN) != 0) {
        uint64_t v = 0;
        [[maybe_unused]] auto r = ::read(wake_fd_.fd, &v, sizeof(v));
      }
    }
    shutdown();
  }

  void shutdown() {
    std::deque<task> tasks;
    {
      std::lock_guard lock{mutex_};
      tasks.swap(queue_);
    }
    for (auto& t : tasks)
      t(true);
    std::vector<uint64_t> ids;
    for (auto& op : waiting_)
      ids.push_back(op->id);
    for (auto& [id, op] : active_)
      ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (auto id : ids)
      finish(id,
             error_info{errc::unavailable, "ucx: transport stopped before the write completed"});
    put_reqs_.clear();
    flush_reqs_.clear();
    flush_eps_.clear();
    // rkeys before their endpoints, endpoints before the worker.
    for (auto& [addr, ep] : eps_)
      ep->rkeys.clear();
    for (auto& d : dead_eps_)
      d.state->rkeys.clear();
    for (auto& [addr, ep] : eps_)
      ep->ep.reset();
    for (auto& d : dead_eps_) {
      d.state->ep.reset();
      if (d.close_req != nullptr) close_reqs_.push_back(std::exchange(d.close_req, nullptr));
    }
    auto deadline = clock_type::now() + std::chrono::seconds(1);
    while (!close_reqs_.empty() && clock_type::now() < deadline) {
      ucp_worker_progress(worker_.get());
      reap_close_requests();
    }
    eps_.clear();
    dead_eps_.clear();
    mems_.clear();
  }

  /// A live endpoint closes gracefully (flush, then tell the peer) so the peer's wire-up
  /// state is not torn mid-handshake: UCX 1.13 asserts on a wire-up reply to a vanished
  /// peer. Returns the close request (null when there is nothing to wait for), which the
  /// loop (or shutdown, bounded) finishes.
  void* close_endpoint(ucp_ep_h ep, bool force) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
    return req != nullptr && !UCS_PTR_IS_ERR(req) ? req : nullptr;
  }

  void reap_close_requests() {
    std::erase_if(close_reqs_, [](void* req) {
      if (ucp_request_check_status(req) == UCS_INPROGRESS) return false;
      ucp_request_free(req);
      return true;
    });
  }

  /// Force-closes failed endpoints here, outside any UCX callback: their error handler
  /// only marks them (closing from inside it is what UCX 1.13.1 does not survive). A dead
  /// endpoint's state is freed once its close has finished: every write on it was failed
  /// when it failed, and UCX calls nothing on a closed endpoint.
  void reap_dead_endpoints() {
    for (auto& d : dead_eps_) {
      if (d.state->ep) {
        d.state->rkeys.clear();
        d.close_req = close_endpoint(d.state->ep.release(), true);
      }
    }
    std::erase_if(dead_eps_, [](dead_endpoint& d) {
      if (d.close_req != nullptr) {
        if (ucp_request_check_status(d.close_req) == UCS_INPROGRESS) return false;
        ucp_request_free(d.close_req);
      }
      return true;
    });
    reap_close_requests();
  }

  error_info timeout_error(const write_op& op) const {
    return {errc::timeout, fmt::format("ucx: write of {} B to worker {} not completed within {} ms",
                                       op.bytes, op.peer, cfg_.op_timeout.count())};
  }

  /// Fails writes past their deadline and reports stalled ones; returns when it next needs
  /// to run.
  clock_type::time_point check_deadlines() {
    auto now = clock_type::now();
    auto next = now + max_wait;
    while (!waiting_.empty() && waiting_.front()->deadline <= now)
      finish(waiting_.front()->id, timeout_error(*waiting_.front()));
    if (!waiting_.empty()) next = std::min(next, waiting_.front()->deadline);
    std::vector<uint64_t> expired;
    for (auto& [id, op] : active_) {
      if (op->deadline <= now) {
        expired.push_back(id);
        continue;
      }
      next = std::min(next, op->deadline);
      if (op->internal || op->stall_reported || op->ep == nullptr || op->ep->failed) continue;
      auto at = op->last_progress + cfg_.stall_timeout;
      if (at > now) {
        next = std::min(next, at);
        continue;
      }
      op->stall_reported = true;
      stalls_.fetch_add(1, std::memory_order_relaxed);
      spdlog::warn(
          "ucx: write of {} B to worker {} (blocks {}) stalled: no progress for {} ms, started "
          "{} ms ago; its endpoint is still connected",
          op->bytes, op->peer, block_list(op->dst), ms_since(op->last_progress, now),
          ms_since(op->started, now));
    }
    for (auto id : expired) {
      auto it = active_.find(id);
      if (it != active_.end()) finish(id, timeout_error(*it->second));
    }
    return next;
  }

  /// Runs a write's completion exactly once and forgets it; late UCX completions for it are
  /// ignored.
  void finish(uint64_t id, error_info err) {
    std::unique_ptr<write_op> op;
    if (auto it = active_.find(id); it != active_.end()) {
      op = std::move(it->second);
      active_.erase(it);
      if (!op->internal) {
        writes_in_flight_.fetch_sub(1, std::memory_order_relaxed);
        bytes_in_flight_.fetch_sub(op->bytes, std::memory_order_relaxed);
      }
    } else {
      auto q = std::find_if(waiting_.begin(), waiting_.end(),
                            [id](const auto& w) { return w->id == id; });
      if (q == waiting_.end()) return;
      op = std::move(*q);
      waiting_.erase(q);
      writes_queued_.fetch_sub(1, std::memory_order_relaxed);
    }
    if (op->job) op->job->cancelled.store(true, std::memory_order_relaxed);
    if (op->internal) return;  // connect(): nobody waits; a failure shows in later writes
    count(err, op->bytes);
    kv_payload p;
    if (!err) p.dst_blocks = std::move(op->dst);
    op->done(std::move(err), std::move(p));
  }

  void progressed(uint64_t id) {
    if (auto it = active_.find(id); it != active_.end())
      it->second->last_progress = clock_type::now();
  }

  static void on_put(void* request, ucs_status_t status, void* user_data) {
    auto* self = static_cast<impl*>(user_data);
    auto it = self->put_reqs_.find(request);
    if (it != self->put_reqs_.end()) {
      uint64_t id = it->second;
      self->put_reqs_.erase(it);
      if (status == UCS_OK)
        self->progressed(id);
      else
        self->finish(id, ucs_error(status, "put"));
    }
    ucp_request_free(request);
  }

  static void on_flush(void* request, ucs_status_t status, void* user_data) {
    auto* self = static_cast<impl*>(user_data);
    auto it = self->flush_reqs_.find(request);
    if (it != self->flush_reqs_.end()) {
      std::vector<uint64_t> ids = std::move(it->second);
      self->flush_reqs_.erase(it);
      error_info err = status == UCS_OK ? error_info{} : ucs_error(status, "flush");
      for (auto id : ids)
        self->finish(id, err);
    }
    ucp_request_free(request);
  }

  static void on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* state = static_cast<endpoint_state*>(arg);
    state->owner->fail_endpoint(state, ucs_error(status, "endpoint failed"));
  }

  void fail_endpoint(endpoint_state* state, error_info err) {
    if (state->failed) return;
    state->failed = true;
    state->ep.get_deleter().force = true;
    state->flush_ready.clear();
    err.code = errc::unavailable;
    std::vector<uint64_t> ids;
    for (auto& [id, op] : active_)
      if (op->ep == state) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    // An idle endpoint to a peer that left is routine; failing writes is worth a warning.
    if (ids.empty())
      spdlog::debug("{}", err.message);
    else
      spdlog::warn("{} ({} writes failed)", err.message, ids.size());
    for (auto id : ids)
      finish(id, err);
    auto it = eps_.find(state->address);
    if (it != eps_.end() && it->second.get() == state) {
      dead_eps_.push_back(dead_endpoint{std::move(it->second)});
      eps_.erase(it);
    }
  }

  result<endpoint_state*> endpoint_for(const std::vector<uint8_t>& address, bool same_host) {
    auto it = eps_.find(address);
    if (it != eps_.end()) return it->second.get();
    auto state = std::make_unique<endpoint_state>();
    state->owner = this;
    state->address = address;
    const bool peer_errors =
        cfg_.peer_error_handling && !(same_host && cfg_.same_host_shared_memory);
    state->peer_errors = peer_errors;
    // Without peer error handling a dead peer never fails what is outstanding: only a forced
    // close cancels it (and a graceful close to a dead peer would never finish).
    state->ep = ep_ptr{nullptr, ep_closer{this, !peer_errors}};
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.address = reinterpret_cast<const ucp_address_t*>(state->address.data());
    p.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    if (peer_errors) {
      p.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      p.err_handler.cb = &on_ep_error;
      p.err_handler.arg = state.get();
    }
    ucp_ep_h ep = nullptr;
    ucs_status_t st = ucp_ep_create(worker_.get(), &p, &ep);
    if (st != UCS_OK) {
      auto err = ucs_error(st, "ucp_ep_create");
      err.code = errc::unavailable;
      spdlog::warn("{}", err.message);
      return err;
    }
    state->ep.reset(ep);
    auto* raw = state.get();
    eps_.emplace(address, std::move(state));
    return raw;
  }

  result<ucp_rkey_h> rkey_for(endpoint_state& ep, const std::vector<uint8_t>& remote_key) {
    auto it = ep.rkeys.find(remote_key);
    if (it != ep.rkeys.end()) return it->second.get();
    ucp_rkey_h rkey = nullptr;
    ucs_status_t st = ucp_ep_rkey_unpack(ep.ep.get(), remote_key.data() + 8, &rkey);
    if (st != UCS_OK) {
      auto err = ucs_error(st, "ucp_ep_rkey_unpack");
      spdlog::warn("{}", err.message);
      return err;
    }
    ep.rkeys.emplace(remote_key, rkey_ptr{rkey});
    return rkey;
  }

  /// A new write from write(): waits its turn in the window.
  void enqueue(std::unique_ptr<write_op> op) {
    waiting_.push_back(std::move(op));
    writes_queued_.fetch_add(1, std::memory_order_relaxed);
  }

  /// Whether the first waiting write fits the window (one write alone always does).
  bool can_admit() const {
    if (waiting_.empty()) return false;
    uint64_t used = bytes_in_flight_.load(std::memory_order_relaxed);
    return used == 0 || used + waiting_.front()->bytes <= cfg_.max_inflight_bytes;
  }

  /// Starts waiting writes in FIFO order while they fit the window.
  void admit() {
    while (can_admit()) {
      auto op = std::move(waiting_.front());
      waiting_.pop_front();
      writes_queued_.fetch_sub(1, std::memory_order_relaxed);
      start(std::move(op));
    }
  }

  /// Connects and issues the puts of a write (a staged one goes to the staging thread
  /// first); the flush follows at the end of this iteration, shared with every other write
  /// started on the same endpoint meanwhile.
  void start(std::unique_ptr<write_op> owned) {
    write_op& op = *owned;
    const uint64_t id = op.id;
    op.started = op.last_progress = clock_type::now();
    active_.emplace(id, std::move(owned));
    if (!op.internal) {
      writes_in_flight_.fetch_add(1, std::memory_order_relaxed);
      bytes_in_flight_.fetch_add(op.bytes, std::memory_order_relaxed);
    }
    auto ep = endpoint_for(op.address, op.same_host);
    if (!ep) return finish(id, ep.error());
    if (!op.internal) {
      auto rkey = rkey_for(**ep, op.remote_key);
      if (!rkey) return finish(id, rkey.error());
      op.rkey = *rkey;
    }
    op.ep = *ep;
    if (op.internal) return ready_to_flush(op);
    if (op.staged != nullptr) {
      auto job = std::make_shared<staging_job>();
      job->op = id;
      job->source = op.staged;
      job->mirror = const_cast<std::byte*>(op.put_base);
      job->block_bytes = op.block_bytes;
      job->segments = op.segments;
      op.job = job;
      {
        std::lock_guard lock{staging_mutex_};
        staging_queue_.push_back(std::move(job));
      }
      staging_cv_.notify_one();
      return;
    }
    if (issue_puts(op, op.segments)) ready_to_flush(op);
  }

  /// A staged piece is in the mirror: put it (and flush after the last).
  void on_piece(uint64_t id, const std::vector<segment>& segs, bool last) {
    auto it = active_.find(id);
    if (it == active_.end()) return;  // failed or timed out meanwhile
    write_op& op = *it->second;
    if (issue_puts(op, segs) && last) ready_to_flush(op);
  }

  /// Issues one put per segment; false when the write ended (failed) on the way.
  bool issue_puts(write_op& op, std::span<const segment> segs) {
    endpoint_state& ep = *op.ep;
    const uint64_t id = op.id;
    op.last_progress = clock_type::now();
    for (const segment& s : segs) {
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.send = &on_put;
      p.user_data = this;
      if (op.memory_type != UCS_MEMORY_TYPE_HOST) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
        p.memory_type = op.memory_type;
      }
      ucs_status_ptr_t req =
          ucp_put_nbx(ep.ep.get(), op.put_base + s.offset, s.bytes, s.remote, op.rkey, &p);
      if (UCS_PTR_IS_ERR(req)) {
        finish(id, ucs_error(UCS_PTR_STATUS(req), "ucp_put_nbx"));
        return false;
      }
      if (req != nullptr) put_reqs_.emplace(req, id);
      if (ep.failed) return false;  // its error handler ran inside the call: `op` is gone
    }
    return true;
  }

  void ready_to_flush(write_op& op) {
    op.ep->flush_ready.push_back(op.id);
    if (std::find(flush_eps_.begin(), flush_eps_.end(), op.ep) == flush_eps_.end())
      flush_eps_.push_back(op.ep);
  }

  /// One flush per endpoint for every write whose puts were issued since the last: a flush
  /// completes all earlier operations on its endpoint, so it completes all of them at once.
  void issue_flushes() {
    std::vector<endpoint_state*> eps;
    eps.swap(flush_eps_);
    for (endpoint_state* ep : eps) {
      std::vector<uint64_t> ids;
      ids.swap(ep->flush_ready);
      if (ep->failed) continue;  // its writes failed with it
      std::erase_if(ids, [this](uint64_t id) { return !active_.contains(id); });
      if (ids.empty()) continue;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.send = &on_flush;
      p.user_data = this;
      ucs_status_ptr_t req = ucp_ep_flush_nbx(ep->ep.get(), &p);
      if (req == nullptr || UCS_PTR_IS_ERR(req)) {
        error_info err =
            req == nullptr ? error_info{} : ucs_error(UCS_PTR_STATUS(req), "ucp_ep_flush_nbx");
        for (auto id : ids)
          finish(id, err);
        continue;
      }
      flush_reqs_.emplace(req, std::move(ids));
    }
  }

  /// Creates the endpoint to `address` and flushes it (wire-up complete before the first
  /// write); the flush is tracked like a write whose completion nobody waits for.
  void start_connect(const std::vector<uint8_t>& address, bool same_host) {
    auto op = std::make_unique<write_op>();
    op->id = next_op_++;
    op->internal = true;
    op->address = address;
    op->same_host = same_host;
    op->done = [](error_info, kv_payload) {};
    op->deadline = clock_type::now() + cfg_.op_timeout;
    start(std::move(op));
  }

  /// Maps `memory` (of `type`) and describes it; on success `pool` is recorded for
  /// write()/deliver(). `memory` is the pool itself, or its staging mirror.
  pool_descriptor do_register(worker_id owner, std::span<std::byte> memory, size_t block_bytes,
                              std::unique_ptr<registered_pool> pool) {
    pool_descriptor d;
    d.owner = owner;
    d.block_bytes = block_bytes;
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = memory.data();
    mp.length = memory.size();
    if (pool->staging == nullptr && pool->memory_type != UCS_MEMORY_TYPE_HOST) {
      mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
      mp.memory_type = pool->memory_type;
    }
    ucp_mem_h memh = nullptr;
    ucs_status_t st = ucp_mem_map(context_.get(), &mp, &memh);
    if (st != UCS_OK) {
      spdlog::error("{}", ucs_error(st, "ucp_mem_map").message);
      return d;
    }
    mem_ptr mem{memh, mem_deleter{context_.get()}};
    void* buf = nullptr;
    size_t len = 0;
    st = ucp_rkey_pack(context_.get(), memh, &buf, &len);
    if (st != UCS_OK) {
      spdlog::error("{}", ucs_error(st, "ucp_rkey_pack").message);
      return d;
    }
    rkey_buffer_ptr packed{buf};
    auto base = reinterpret_cast<uint64_t>(memory.data());
    d.remote_key.resize(8 + len);
    for (size_t i = 0; i < 8; ++i)
      d.remote_key[i] = static_cast<uint8_t>(base >> (8 * i));
    std::memcpy(d.remote_key.data() + 8, buf, len);
    d.worker_address = worker_address_;
    d.host = host_;
    d.num_blocks = static_cast<uint32_t>(memory.size() / block_bytes);
    mems_.push_back(std::move(mem));
    {
      std::lock_guard lock{mutex_};
      pools_.push_back(std::move(pool));
    }
    return d;
  }
};

ucx_transport::ucx_transport(std::unique_ptr<impl> impl) : impl_(std::move(impl)) {}

ucx_transport::~ucx_transport() = default;

result<std::shared_ptr<ucx_transport>> ucx_transport::create(ucx_config cfg) {
  auto im = std::make_unique<impl>();
  im->cfg_ = cfg;
  im->host_ = host_identity();
  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);  // honours UCX_* env
  if (st != UCS_OK) return ucs_error(st, "ucp_config_read");
  config_ptr config{raw_config};
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  ucp_context_h context = nullptr;
  st = ucp_init(&params, config.get(), &context);
  if (st != UCS_OK) return ucs_error(st, "ucp_init");
  im->context_.reset(context);

  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  st = ucp_context_query(context, &attr);
  if (st == UCS_OK) {
    im->cuda_supported_ = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    // Once per process: every context of one UCX build answers the same.
    static std::once_flag logged;
    std::call_once(logged, [&] {
      spdlog::info("ucx: CUDA memory {}",
                   im->cuda_supported_
                       ? "supported: device pools are registered directly"
                       : "not supported by this UCX: device pools are staged through host memory");
    });
  } else {
    spdlog::warn("{}; device pools will be staged through host memory",
                 ucs_error(st, "ucp_context_query").message);
  }

  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches it
  ucp_worker_h worker = nullptr;
  st = ucp_worker_create(context, &wp, &worker);
  if (st != UCS_OK) return ucs_error(st, "ucp_worker_create");
  im->worker_.reset(worker);

  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  st = ucp_worker_get_address(worker, &addr, &addr_len);
  if (st != UCS_OK) return ucs_error(st, "ucp_worker_get_address");
  {
    address_ptr address{addr, address_deleter{worker}};
    auto* bytes = reinterpret_cast<const uint8_t*>(addr);
    im->worker_address_.assign(bytes, bytes + addr_len);
  }

  if (!cfg.busy_poll) {
    st = ucp_worker_get_efd(worker, &im->worker_efd_);
    if (st != UCS_OK) return ucs_error(st, "ucp_worker_get_efd");
  }
  im->wake_fd_.fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (im->wake_fd_.fd < 0)
    return error_info{errc::unavailable, fmt::format("ucx: eventfd: {}", std::strerror(errno))};
  auto* raw = im.get();
  im->thread_ = std::thread([raw] { raw->run(); });
  im->staging_thread_ = std::thread([raw] { raw->run_staging(); });
  return std::shared_ptr<ucx_transport>(new ucx_transport(std::move(im)));
}

bool ucx_transport::cuda_memory_supported() const {
  return impl_->cuda_supported_;
}

kv_transport_stats ucx_transport::stats() const {
  return impl_->stats();
}

pool_descriptor ucx_transport::register_pool(worker_id owner, pool_memory& pool,
                                             size_t block_bytes) {
  std::span<std::byte> memory = pool.bytes();
  pool_descriptor failed;
  failed.owner = owner;
  failed.block_bytes = block_bytes;
  if (memory.empty() || block_bytes == 0 || memory.size() % block_bytes != 0) {
    spdlog::error("ucx: pool of {} B for worker {} is not a whole number of {} B blocks",
                  memory.size(), owner, block_bytes);
    return failed;
  }
  auto reg = std::make_unique<registered_pool>();
  reg->begin = memory.data();
  reg->end = memory.data() + memory.size();
  std::span<std::byte> mapped = memory;  // what UCX maps and peers put into
  if (pool.kind() == memory_kind::cuda && impl_->cuda_supported_) {
    reg->memory_type = UCS_MEMORY_TYPE_CUDA;
  } else if (pool.kind() != memory_kind::host) {
    try {
      reg->staging = pool.make_host_staging(memory.size());
    } catch (const std::exception& e) {
      spdlog::error("ucx: no host staging for the {} pool of worker {} ({} B): {}",
                    memory_kind_name(pool.kind()), owner, memory.size(), e.what());
      return failed;
    }
    if (!reg->staging || reg->staging->kind() != memory_kind::host ||
        reg->staging->bytes().size() < memory.size()) {
      spdlog::error("ucx: the {} pool of worker {} gave no usable host staging of {} B",
                    memory_kind_name(pool.kind()), owner, memory.size());
      return failed;
    }
    mapped = reg->staging->bytes().first(memory.size());
    spdlog::info("ucx: the {} pool of worker {} ({} B) is staged through host memory",
                 memory_kind_name(pool.kind()), owner, memory.size());
  }
  auto promise = std::make_shared<std::promise<pool_descriptor>>();
  auto future = promise->get_future();
  impl* im = impl_.get();
  // std::function needs a copyable callable: the task owns `reg` through a raw pointer.
  impl_->submit(
      [im, promise, owner, mapped, block_bytes, failed, raw = reg.release()](bool cancelled) {
        std::unique_ptr<registered_pool> r{raw};
        if (cancelled) return promise->set_value(failed);
        promise->set_value(im->do_register(owner, mapped, block_bytes, std::move(r)));
      });
  return future.get();
}

void ucx_transport::connect(const pool_descriptor& peer) {
  if (peer.worker_address.empty()) return;
  impl* im = impl_.get();
  const bool same_host = !peer.host.empty() && peer.host == impl_->host_;
  impl_->submit([im, address = peer.worker_address, same_host](bool cancelled) {
    if (!cancelled) im->start_connect(address, same_host);
  });
}

void ucx_transport::write(const pool_memory& pool, size_t block_bytes,
                          std::span<const block_id> src, const pool_descriptor& peer,
                          std::span<const block_id> dst, completion done) {
  std::span<const std::byte> local = pool.bytes();
  auto invalid = [&](std::string msg) {
    error_info err{errc::invalid_request, "ucx write: " + std::move(msg)};
    impl_->count(err, 0);
    done(std::move(err), {});
  };
  if (src.size() != dst.size())
    return invalid(fmt::format("{} source blocks for {} destinations", src.size(), dst.size()));
  if (block_bytes == 0 || peer.block_bytes != block_bytes)
    return invalid(fmt::format("block size {} B does not match the peer's {} B", block_bytes,
                               peer.block_bytes));
  if (peer.remote_key.size() <= 8 || peer.worker_address.empty())
    return invalid(
        fmt::format("peer descriptor of worker {} has no remote key or address", peer.owner));
  size_t local_blocks = local.size() / block_bytes;
  for (size_t i = 0; i < src.size(); ++i)
    if (src[i] >= local_blocks || dst[i] >= peer.num_blocks)
      return invalid(fmt::format("block {}->{} out of range ({} local, {} peer)", src[i], dst[i],
                                 local_blocks, peer.num_blocks));
  const registered_pool* reg = impl_->find_pool(local);
  if (reg == nullptr) return invalid("local memory is not inside a registered pool");
  if (src.empty()) {
    impl_->count({}, 0);
    return done(error_info{}, kv_payload{});
  }

  auto op = std::make_unique<impl::write_op>();
  op->peer = peer.owner;
  op->address = peer.worker_address;
  op->same_host = !peer.host.empty() && peer.host == impl_->host_;
  op->remote_key = peer.remote_key;
  op->block_bytes = block_bytes;
  op->dst.assign(dst.begin(), dst.end());
  op->bytes = uint64_t{src.size()} * block_bytes;
  op->done = std::move(done);
  op->deadline = clock_type::now() + impl_->cfg_.op_timeout;
  uint64_t base = 0;
  for (int i = 7; i >= 0; --i)
    base = (base << 8) | peer.remote_key[static_cast<size_t>(i)];
  // Runs of consecutive (src, dst) ids become one segment: one put each.
  for (size_t i = 0; i < src.size();) {
    size_t run = 1;
    while (i + run < src.size() && src[i + run] == src[i] + run && dst[i + run] == dst[i] + run)
      ++run;
    op->segments.push_back(
        {size_t{src[i]} * block_bytes, run * block_bytes, base + uint64_t{dst[i]} * block_bytes});
    i += run;
  }
  const auto offset = static_cast<size_t>(local.data() - reg->begin);
  if (reg->staging) {
    op->staged = &pool;
    op->put_base = reg->mirror() + offset;
  } else {
    op->put_base = local.data();
    op->memory_type = reg->memory_type;
  }
  impl* im = impl_.get();
  // std::function needs a copyable callable: the task owns the op through a raw pointer and
  // runs exactly once (cancelled at shutdown).
  impl_->submit([im, raw = op.release()](bool cancelled) {
    std::unique_ptr<impl::write_op> w{raw};
    if (cancelled) {
      error_info err{errc::unavailable, "ucx: transport stopped before the write"};
      im->count(err, 0);
      return w->done(std::move(err), {});
    }
    w->id = im->next_op_++;
    im->enqueue(std::move(w));
  });
}

error_info ucx_transport::deliver(const kv_payload& payload, pool_memory& pool,
                                  size_t block_bytes) {
  std::span<const std::byte> local = pool.bytes();
  if (block_bytes == 0) return {errc::invalid_request, "ucx deliver: block size 0"};
  if (!payload.bytes.empty())
    return {errc::kv_corrupt,
            fmt::format("ucx deliver: a one-sided payload carries {} B", payload.bytes.size())};
  size_t local_blocks = local.size() / block_bytes;
  for (auto b : payload.dst_blocks)
    if (b >= local_blocks)
      return {
          errc::kv_corrupt,
          fmt::format("ucx deliver: payload names block {} of a {}-block pool", b, local_blocks)};
  const registered_pool* reg = impl_->find_pool(local);
  if (reg == nullptr && pool.kind() != memory_kind::host)
    return {errc::internal, fmt::format("ucx deliver: the {} pool is not registered here",
                                        memory_kind_name(pool.kind()))};
  if (reg == nullptr || !reg->staging) return {};  // the bytes are in place
  // Staged: the peer put into the mirror; copy the delivered blocks (runs of consecutive
  // ids at once) to the device.
  const std::byte* mirror = reg->mirror() + (local.data() - reg->begin);
  const auto& ids = payload.dst_blocks;
  try {
    for (size_t i = 0; i < ids.size();) {
      size_t run = 1;
      while (i + run < ids.size() && ids[i + run] == ids[i] + run)
        ++run;
      const size_t off = size_t{ids[i]} * block_bytes;
      pool.copy_in(off, mirror + off, run * block_bytes);
      i += run;
    }
  } catch (const std::exception& e) {
    return {errc::internal,
            fmt::format("ucx deliver: copying staged blocks to the device failed: {}", e.what())};
  }
  return {};
}

}  // namespace tokenmill
