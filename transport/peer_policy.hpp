#pragma once
/// Which peer pools a connection-based transport may open an endpoint to (issue 18): only
/// those the supervisor announced in its membership. A pool descriptor names a worker's
/// UCX address and remote key; a forged one (from an actor that is not a member, or from a
/// stale or corrupted message) would make this node connect to an address of the sender's
/// choosing and push KV there, or write into a region the descriptor was not announced
/// for. CAF-free and UCX-free (STYLE.md §2): ucx_transport asks it before it creates an
/// endpoint or unpacks a remote key; tests call it directly.
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "transport/kv_transport.hpp"

namespace tokenmill {

/// The pools announced by the supervisor, by owner. Not thread-safe: the transport guards it.
class announced_pools {
 public:
  /// `enforcing` false: every descriptor is accepted (single-process clusters and transport
  /// tests that have no supervisor); true: only announced ones, and before the first
  /// announcement none.
  explicit announced_pools(bool enforcing = false) : enforcing_(enforcing) {}

  /// Replaces what is announced with `pools` (every up member's pool, from one membership).
  /// Descriptors without a worker address (members without a pool, inline pools) are
  /// skipped; of two descriptors for one owner the last counts. Returns how many are kept.
  size_t replace(std::span<const pool_descriptor> pools);

  /// "" when an endpoint to `peer` may be created and its remote key used: not enforcing,
  /// or `peer` is exactly what was announced for its owner (address, remote key, block size
  /// and count, host). Otherwise why not, naming the owner, for the refusal's log line.
  std::string check(const pool_descriptor& peer) const;

  bool enforcing() const { return enforcing_; }
  /// Pools announced now.
  size_t size() const { return pools_.size(); }

 private:
  bool enforcing_;
  bool announced_ = false;  ///< replace() has been called at least once
  std::map<worker_id, pool_descriptor> pools_;
};

}  // namespace tokenmill
