#include "transport/peer_policy.hpp"

#include <fmt/format.h>

namespace tokenmill {

size_t announced_pools::replace(std::span<const pool_descriptor> pools) {
  announced_ = true;
  pools_.clear();
  for (const auto& p : pools)
    if (!p.worker_address.empty()) pools_[p.owner] = p;
  return pools_.size();
}

std::string announced_pools::check(const pool_descriptor& peer) const {
  if (!enforcing_) return {};
  if (!announced_)
    return fmt::format(
        "the pool of worker {} is not announced: no membership from the supervisor yet",
        peer.owner);
  auto it = pools_.find(peer.owner);
  if (it == pools_.end())
    return fmt::format("worker {} is not a member the supervisor announced (not joined, or down)",
                       peer.owner);
  const auto& a = it->second;
  const char* what = a.worker_address != peer.worker_address ? "worker address"
                     : a.remote_key != peer.remote_key       ? "remote key"
                     : a.block_bytes != peer.block_bytes     ? "block size"
                     : a.num_blocks != peer.num_blocks       ? "block count"
                     : a.host != peer.host                   ? "host"
                                                             : nullptr;
  if (what == nullptr) return {};
  return fmt::format(
      "the descriptor of worker {} differs from the announced one in its {} (forged, or "
      "from before the worker restarted)",
      peer.owner, what);
}

}  // namespace tokenmill
