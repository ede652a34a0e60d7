#pragma once
/// The KV data plane interface (DESIGN.md §4). Small on purpose: register a pool, write
/// blocks to a peer's pool, deliver what arrived. A one-sided transport (UCX) puts the
/// bytes straight into the peer's memory and its payload carries no bytes; the inline
/// transport carries the bytes inside the control message that follows.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/errors.hpp"
#include "common/ids.hpp"
#include "common/pool_memory.hpp"

namespace tokenmill {

/// How peers address a registered pool. Sent once, when the owning worker joins.
struct pool_descriptor {
  worker_id owner = 0;
  uint64_t block_bytes = 0;
  uint32_t num_blocks = 0;
  std::vector<uint8_t> remote_key;      ///< transport-specific (packed rkey); empty for inline
  std::vector<uint8_t> worker_address;  ///< transport-specific; empty for inline
  /// The host the pool lives on (its kernel's boot id): a transport may take a faster,
  /// host-local path to a pool on its own host. Empty when unknown.
  std::string host;
};

/// What a completed write hands to the control message for the destination.
struct kv_payload {
  std::vector<block_id> dst_blocks;
  std::vector<uint8_t> bytes;  ///< dst_blocks.size() * block_bytes for inline; else empty
};

/// What a transport has done since it was created, for metrics and tests. Counters only
/// grow; the last three are gauges.
struct kv_transport_stats {
  uint64_t bytes_written = 0;     ///< bytes of writes that completed successfully
  uint64_t writes_completed = 0;  ///< writes whose `done` reported success
  uint64_t writes_failed = 0;     ///< writes whose `done` reported an error (timeouts included)
  uint64_t timeouts = 0;          ///< writes failed with errc::timeout
  uint64_t stalls = 0;            ///< writes reported stalled (no progress, peer connected)
  uint64_t peers_refused = 0;     ///< writes and connects refused: pool not announced
  uint32_t writes_in_flight = 0;  ///< started and not yet completed
  uint32_t writes_queued = 0;     ///< waiting for room in the transport's window
  uint64_t bytes_in_flight = 0;   ///< bytes of the writes in flight
};

class kv_transport {
 public:
  using completion = std::function<void(error_info, kv_payload)>;
  virtual ~kv_transport() = default;
  virtual std::string_view name() const = 0;
  /// Registers a worker's pool memory (once, at start) and describes it for peers. Host
  /// memory is used in place; other memory (a CUDA pool) is used in place where the
  /// transport can reach it, else through host staging the transport owns.
  virtual pool_descriptor register_pool(worker_id owner, pool_memory& memory,
                                        size_t block_bytes) = 0;
  /// Copies local blocks `src` of `local` (a registered pool) into blocks `dst` of `peer`.
  /// `done` runs exactly once: after the data is at the peer (one-sided: flushed) or in the
  /// payload (inline). Consecutive blocks may be coalesced into one operation.
  virtual void write(const pool_memory& local, size_t block_bytes, std::span<const block_id> src,
                     const pool_descriptor& peer, std::span<const block_id> dst,
                     completion done) = 0;
  /// Receiver side: makes a payload's blocks visible in the local pool. Validates block
  /// ids and sizes; on error nothing is written.
  virtual error_info deliver(const kv_payload& payload, pool_memory& local, size_t block_bytes) = 0;

  // Host memory given as a span (tests, benchmarks): the same calls through a view.
  pool_descriptor register_pool(worker_id owner, std::span<std::byte> memory, size_t block_bytes) {
    host_memory_view v(memory);
    return register_pool(owner, v, block_bytes);
  }
  void write(std::span<const std::byte> local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) {
    host_memory_view v({const_cast<std::byte*>(local.data()), local.size()});
    write(v, block_bytes, src, peer, dst, std::move(done));
  }
  error_info deliver(const kv_payload& payload, std::span<std::byte> local, size_t block_bytes) {
    host_memory_view v(local);
    return deliver(payload, v, block_bytes);
  }

  /// Counters and gauges of this transport; thread-safe.
  virtual kv_transport_stats stats() const = 0;

  /// Prepares the path to `peer` ahead of the first write (a connection-based transport
  /// connects now), so that the first transfer does not pay for it. Asynchronous; failures
  /// show up in later writes. Nothing to do for transports without connections.
  virtual void connect(const pool_descriptor& peer) { (void)peer; }
  /// The pools the supervisor announced (every up member's, from one membership): a
  /// transport that opens endpoints to peers may refuse any other descriptor
  /// (ucx_config::announced_only). Each call replaces the previous set. Nothing to do for
  /// transports without connections: inline payloads travel inside actor messages between
  /// authenticated nodes.
  virtual void announce_pools(std::span<const pool_descriptor> pools) { (void)pools; }
  /// Whether a write to `peer` would pass the announcement check now (announce_pools): a
  /// worker holding a job for a pool announced in a membership it has not received yet
  /// waits for that membership instead of having the write refused. Always true for
  /// transports that do not check.
  virtual bool accepts_peer(const pool_descriptor& peer) const {
    (void)peer;
    return true;
  }
  /// Whether writes put bytes straight into the peer's memory (UCX): a write still in
  /// flight can then land after the receiver gave up on it, so the receiver must not reuse
  /// its blocks until the writer says it is done. Inline payloads only land when delivered.
  virtual bool one_sided() const { return false; }
};

/// Block bytes travel inside actor messages: the transport for single-process clusters
/// and the fallback between nodes.
class inline_transport final : public kv_transport {
 public:
  using kv_transport::deliver;
  using kv_transport::register_pool;
  using kv_transport::write;
  std::string_view name() const override { return "inline"; }
  pool_descriptor register_pool(worker_id owner, pool_memory& memory, size_t block_bytes) override;
  void write(const pool_memory& local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) override;
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t block_bytes) override;
  kv_transport_stats stats() const override;

 private:
  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> writes_completed_{0};
  std::atomic<uint64_t> writes_failed_{0};
  std::atomic<uint64_t> timeouts_{0};
};

}  // namespace tokenmill
