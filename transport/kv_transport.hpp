#pragma once
/// The KV data plane interface (DESIGN.md §4). Small on purpose: register a pool, write
/// blocks to a peer's pool, deliver what arrived. A one-sided transport (UCX) puts the
/// bytes straight into the peer's memory and its payload carries no bytes; the inline
/// transport carries the bytes inside the control message that follows.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "common/errors.hpp"
#include "common/ids.hpp"

namespace tokenmill {

/// How peers address a registered pool. Sent once, when the owning worker joins.
struct pool_descriptor {
  worker_id owner = 0;
  uint64_t block_bytes = 0;
  uint32_t num_blocks = 0;
  std::vector<uint8_t> remote_key;      ///< transport-specific (packed rkey); empty for inline
  std::vector<uint8_t> worker_address;  ///< transport-specific; empty for inline
};

/// What a completed write hands to the control message for the destination.
struct kv_payload {
  std::vector<block_id> dst_blocks;
  std::vector<uint8_t> bytes;  ///< dst_blocks.size() * block_bytes for inline; else empty
};

class kv_transport {
 public:
  using completion = std::function<void(error_info, kv_payload)>;
  virtual ~kv_transport() = default;
  virtual std::string_view name() const = 0;
  /// Registers a worker's pool memory (once, at start) and describes it for peers.
  virtual pool_descriptor register_pool(worker_id owner, std::span<std::byte> memory,
                                        size_t block_bytes) = 0;
  /// Copies local blocks `src` of `local` (a registered pool) into blocks `dst` of `peer`.
  /// `done` runs exactly once: after the data is at the peer (one-sided: flushed) or in the
  /// payload (inline). Consecutive blocks may be coalesced into one operation.
  virtual void write(std::span<const std::byte> local, size_t block_bytes,
                     std::span<const block_id> src, const pool_descriptor& peer,
                     std::span<const block_id> dst, completion done) = 0;
  /// Receiver side: makes a payload's blocks visible in the local pool. Validates block
  /// ids and sizes; on error nothing is written.
  virtual error_info deliver(const kv_payload& payload, std::span<std::byte> local,
                             size_t block_bytes) = 0;
  /// Prepares the path to `peer` ahead of the first write (a connection-based transport
  /// connects now), so that the first transfer does not pay for it. Asynchronous; failures
  /// show up in later writes. Nothing to do for transports without connections.
  virtual void connect(const pool_descriptor& peer) { (void)peer; }
};

/// Block bytes travel inside actor messages: the transport for single-process clusters
/// and the fallback between nodes.
class inline_transport final : public kv_transport {
 public:
  std::string_view name() const override { return "inline"; }
  pool_descriptor register_pool(worker_id owner, std::span<std::byte> memory,
                                size_t block_bytes) override;
  void write(std::span<const std::byte> local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& peer, std::span<const block_id> dst, completion done) override;
  error_info deliver(const kv_payload& payload, std::span<std::byte> local,
                     size_t block_bytes) override;
};

}  // namespace tokenmill
