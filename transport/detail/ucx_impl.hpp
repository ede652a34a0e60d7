#pragma once
/// The ucx transport's state (ucx_transport::impl): declared here, defined in
/// ucx_progress.cpp (the progress thread: window, puts, flushes, deadlines, endpoints) and
/// used by ucx_transport.cpp (create, register_pool, write, deliver). Internal to transport/.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <ucp/api/ucp.h>

#include "common/pool_memory.hpp"
#include "common/result.hpp"
#include "transport/detail/staging_thread.hpp"
#include "transport/detail/ucx_handles.hpp"
#include "transport/peer_policy.hpp"
#include "transport/transfer_window.hpp"
#include "transport/ucx_transport.hpp"

namespace tokenmill {
namespace ucx {

using clock_type = transfer_clock;

/// Device bytes staged per piece of a write (whole blocks; at least one block).
inline constexpr size_t piece_bytes = size_t{1} << 20;
/// The progress thread wakes at least this often in wake-up mode.
inline constexpr auto max_wait = std::chrono::milliseconds(1000);

/// A registered pool: the address range callers name it by and, for a device pool this UCX
/// cannot map, the host mirror that is mapped in its place.
struct registered_pool {
  const std::byte* begin = nullptr;
  const std::byte* end = nullptr;
  ucs_memory_type_t memory_type = UCS_MEMORY_TYPE_HOST;  ///< of what puts read when in place
  std::unique_ptr<pool_memory> staging;                  ///< the host mirror, or null
  std::byte* mirror() const { return staging ? staging->bytes().data() : nullptr; }
};

}  // namespace ucx

struct ucx_transport::impl {
  using clock_type = ucx::clock_type;
  using context_ptr = ucx::context_ptr;
  using worker_ptr = ucx::worker_ptr;
  using mem_ptr = ucx::mem_ptr;
  using rkey_ptr = ucx::rkey_ptr;
  using fd_guard = ucx::fd_guard;
  using registered_pool = ucx::registered_pool;

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
    std::vector<transfer_segment> segments;
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

  std::mutex peers_mutex_;  ///< guards peers_ (callers' threads)
  announced_pools peers_;   ///< which descriptors may get an endpoint (cfg_.announced_only)

  // Counters and gauges (stats()); written by the progress thread, except writes_failed_.
  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> writes_completed_{0};
  std::atomic<uint64_t> writes_failed_{0};
  std::atomic<uint64_t> timeouts_{0};
  std::atomic<uint64_t> stalls_{0};
  std::atomic<uint64_t> peers_refused_{0};
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

  /// Device -> mirror copies of staged writes; started by create().
  std::unique_ptr<staging_thread> staging_;

  std::thread thread_;

  ~impl();

  /// Wakes the progress thread (any thread).
  void wake();

  /// Queues `t` for the progress thread, or runs it cancelled at once when stopping.
  void submit(task t);

  /// The counters and gauges (any thread).
  kv_transport_stats stats() const;

  /// Counts a write's outcome (any thread).
  void count(const error_info& err, uint64_t bytes);

  /// "" when `peer` may get an endpoint (peer_policy.hpp); else why not, after logging the
  /// refusal once per call and counting it (any thread). `what` names the operation.
  std::string refuse_peer(const pool_descriptor& peer, const char* what);

  /// The registered pool that contains `range`, or null.
  const registered_pool* find_pool(std::span<const std::byte> range);

  /// The staging thread's results, as tasks for the progress thread.
  void start_staging();

  // ---------------------------------------------------------------- progress thread
  /// The progress loop: tasks, window, flushes, deadlines, UCX progress, then wait.
  void run();

  /// Fails what is left and releases every UCX handle in order (progress thread).
  void shutdown();

  /// A live endpoint closes gracefully (flush, then tell the peer) so the peer's wire-up
  /// state is not torn mid-handshake: UCX 1.13 asserts on a wire-up reply to a vanished
  /// peer. Returns the close request (null when there is nothing to wait for), which the
  /// loop (or shutdown, bounded) finishes.
  void* close_endpoint(ucp_ep_h ep, bool force);

  /// Frees the endpoint close requests UCX has finished.
  void reap_close_requests();

  /// Force-closes failed endpoints here, outside any UCX callback: their error handler
  /// only marks them (closing from inside it is what UCX 1.13.1 does not survive). A dead
  /// endpoint's state is freed once its close has finished: every write on it was failed
  /// when it failed, and UCX calls nothing on a closed endpoint.
  void reap_dead_endpoints();

  /// errc::timeout for `op`, naming its size, peer and op_timeout.
  error_info timeout_error(const write_op& op) const;

  /// Fails writes past their deadline and reports stalled ones; returns when it next needs
  /// to run.
  clock_type::time_point check_deadlines();

  /// Runs a write's completion exactly once and forgets it; late UCX completions for it are
  /// ignored.
  void finish(uint64_t id, error_info err);

  /// Something completed for write `id`: its stall clock restarts.
  void progressed(uint64_t id);

  /// UCX completion callbacks (progress thread, inside ucp_worker_progress).
  static void on_put(void* request, ucs_status_t status, void* user_data);

  static void on_flush(void* request, ucs_status_t status, void* user_data);

  static void on_ep_error(void* arg, ucp_ep_h, ucs_status_t status);

  /// Fails every write on `state` and moves it to dead_eps_ for reap_dead_endpoints().
  void fail_endpoint(endpoint_state* state, error_info err);

  /// The endpoint to the worker at `address`, created on first use.
  result<endpoint_state*> endpoint_for(const std::vector<uint8_t>& address, bool same_host);

  /// The rkey of `remote_key` unpacked for `ep`, cached on it.
  result<ucp_rkey_h> rkey_for(endpoint_state& ep, const std::vector<uint8_t>& remote_key);

  /// A new write from write(): waits its turn in the window.
  void enqueue(std::unique_ptr<write_op> op);

  /// Whether the first waiting write fits the window (one write alone always does).
  bool can_admit() const;

  /// Starts waiting writes in FIFO order while they fit the window.
  void admit();

  /// Connects and issues the puts of a write (a staged one goes to the staging thread
  /// first); the flush follows at the end of this iteration, shared with every other write
  /// started on the same endpoint meanwhile.
  void start(std::unique_ptr<write_op> owned);

  /// A staged piece is in the mirror: put it (and flush after the last).
  void on_piece(uint64_t id, const std::vector<transfer_segment>& segs, bool last);

  /// Issues one put per segment; false when the write ended (failed) on the way.
  bool issue_puts(write_op& op, std::span<const transfer_segment> segs);

  /// `op`'s puts are issued: flush its endpoint at the end of this iteration.
  void ready_to_flush(write_op& op);

  /// One flush per endpoint for every write whose puts were issued since the last: a flush
  /// completes all earlier operations on its endpoint, so it completes all of them at once.
  void issue_flushes();

  /// Creates the endpoint to `address` and flushes it (wire-up complete before the first
  /// write); the flush is tracked like a write whose completion nobody waits for.
  void start_connect(const std::vector<uint8_t>& address, bool same_host);

  /// Maps `memory` (of `type`) and describes it; on success `pool` is recorded for
  /// write()/deliver(). `memory` is the pool itself, or its staging mirror.
  pool_descriptor do_register(worker_id owner, std::span<std::byte> memory, size_t block_bytes,
                              std::unique_ptr<registered_pool> pool);
};

}  // namespace tokenmill
