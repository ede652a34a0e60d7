#pragma once
/// One-sided KV transport over UCX (UCP RMA). The bytes go straight from a local pool into
/// the peer's registered pool with `ucp_put_nbx`; the payload that follows carries only the
/// block ids. One progress thread owns the UCP worker (STYLE.md §6); no UCX handle leaves
/// this class.
#include <chrono>
#include <memory>
#include <span>
#include <string_view>

#include "common/result.hpp"
#include "transport/kv_transport.hpp"

namespace tokenmill {

/// Tuning for a ucx_transport.
struct ucx_config {
  bool busy_poll = false;  ///< spin on ucp_worker_progress instead of wake-up mode
  /// Endpoints report a dead or unreachable peer (UCP_ERR_HANDLING_MODE_PEER). Off by
  /// default: a dead peer is then noticed through op_timeout and the cluster's heartbeats,
  /// which is the configuration the tests run (loopback, network namespaces over veth, a
  /// peer killed mid-transfer). On, UCX fails a dead peer's writes itself, but Debian's UCX
  /// 1.13.1 (built with assertions) can abort the surviving process in that path
  /// ("ucp_request.c:684 ... got REP message", removed upstream in openucx/ucx#8175), and
  /// UCX 1.13's shared-memory and CMA transports cannot be used with it.
  bool peer_error_handling = false;
  /// With peer_error_handling on: endpoints to pools on this same host
  /// (pool_descriptor::host) are still created without it, so that UCX may use shared
  /// memory and CMA between the processes (5x tcp's bandwidth here). Endpoints without peer
  /// error handling are force-closed at shutdown, which cancels what is outstanding on them.
  bool same_host_shared_memory = true;
  /// A write not completed this long after write() was called fails with errc::timeout (peer
  /// hung or unreachable). Counted from the call, so time spent queued behind the window
  /// counts too: the caller is told within this bound either way.
  std::chrono::milliseconds op_timeout{5000};
  /// A started write whose puts and flush see no completion for this long, while its endpoint
  /// is still connected, is reported once (a warning and stats().stalls): the peer is alive
  /// as far as UCX knows but not answering. The write goes on until op_timeout.
  std::chrono::milliseconds stall_timeout{1000};
  /// Bytes of writes in flight at once (started: staged, put or being flushed), across all
  /// peers. Writes beyond it wait in FIFO order and start as earlier ones complete; a single
  /// write larger than the window starts alone.
  uint64_t max_inflight_bytes = uint64_t{256} << 20;
  /// Endpoints (and remote keys) only for pools the supervisor announced (announce_pools();
  /// transport/peer_policy.hpp): a write or connect to any other descriptor is refused with
  /// errc::unauthenticated and a warning, before anything is allocated for it. Node
  /// processes turn it on; off, every descriptor is used (tests and tools without a
  /// supervisor).
  bool announced_only = false;
};

/// A UCP context with one worker and the thread that progresses it. Peers are addressed by
/// the worker address and packed rkey inside their pool_descriptor.
///
/// Device (CUDA) pools are registered directly when this UCX supports CUDA memory. Otherwise
/// (Debian's UCX) the transport stages them through a host mirror of the pool: peers put into
/// the mirror and deliver() copies the delivered blocks to the device; a write copies its
/// blocks device -> mirror on the transport's staging thread, piece by piece, each piece put
/// as soon as it is copied.
class ucx_transport final : public kv_transport {
 public:
  /// A UCP context (UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP) with one worker and its progress
  /// thread. Errors are values (errc::unavailable when UCX cannot start here).
  static result<std::shared_ptr<ucx_transport>> create(ucx_config cfg = {});
  /// Stops the thread; fails pending writes with errc::unavailable; releases everything.
  ~ucx_transport() override;
  ucx_transport(const ucx_transport&) = delete;
  ucx_transport& operator=(const ucx_transport&) = delete;

  using kv_transport::deliver;
  using kv_transport::register_pool;
  using kv_transport::write;
  /// "ucx".
  std::string_view name() const override { return "ucx"; }
  bool one_sided() const override { return true; }
  /// Whether this UCX registers CUDA memory itself (UCS_MEMORY_TYPE_CUDA among the
  /// context's memory types); when not, device pools are staged through host memory.
  bool cuda_memory_supported() const;
  /// Maps `memory` for RMA (kept for the transport's lifetime) and describes it: remote_key
  /// is the 8-byte little-endian base address followed by the packed rkey, worker_address
  /// the UCP worker address. A device pool this UCX cannot map gets a host staging mirror
  /// (memory.make_host_staging), which is what is mapped and what peers put into. Empty or
  /// misaligned memory gives num_blocks 0. Blocks the caller until the progress thread has
  /// done the registration.
  pool_descriptor register_pool(worker_id owner, pool_memory& memory, size_t block_bytes) override;
  /// Puts blocks `src` of `local` (inside a registered pool) into blocks `dst` of `peer`,
  /// coalescing runs of consecutive ids, and flushes; writes started together on one
  /// endpoint share one flush. `local` must stay alive until `done`. A staged pool's blocks
  /// are copied to its mirror first (only the blocks written). `done` runs exactly once: on
  /// the caller's thread for invalid input (errc::invalid_request) or a peer that was not
  /// announced (errc::unauthenticated, with announced_only), otherwise on the
  /// progress thread after the flush, on an endpoint error (errc::unavailable), after
  /// op_timeout (errc::timeout) or at destruction (errc::unavailable).
  void write(const pool_memory& local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) override;
  /// One-sided: the bytes are already in place (host or directly mapped memory), or in a
  /// staged pool's mirror, from which the payload's blocks are copied to the device before
  /// this returns. Checks that the payload carries no bytes and that every block id fits
  /// `local`; on error nothing is written.
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t block_bytes) override;
  /// Counters and gauges; callable from any thread.
  kv_transport_stats stats() const override;
  /// Creates the endpoint to `peer` and flushes it, so UCX's wire-up handshake is over
  /// before the first transfer. Besides the latency, this keeps connections from being
  /// half-open when a peer dies mid-transfer: UCX 1.13.1 (Debian, assertions on) aborts the
  /// surviving process when a peer fails during wire-up.
  void connect(const pool_descriptor& peer) override;
  /// With ucx_config::announced_only: from now on, endpoints only to these pools.
  void announce_pools(std::span<const pool_descriptor> pools) override;
  bool accepts_peer(const pool_descriptor& peer) const override;

  struct impl;  ///< UCX state, owned by the progress thread (ucx_transport.cpp)

 private:
  explicit ucx_transport(std::unique_ptr<impl> impl);
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill
