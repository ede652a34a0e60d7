#include "actors/supervisor/supervisor_policy.hpp"

#include <fmt/format.h>

namespace tokenmill {

bool cluster_ready(std::span<const member_state> members, size_t expected_workers) {
  bool router = false, decode = false;
  for (const auto& m : members) {
    if (!m.up) continue;
    router |= m.kind == role::router;
    decode |= m.kind == role::decode;
  }
  return router && decode && members.size() >= expected_workers;
}

clock_estimate fold_clock_sample(clock_estimate best, const clock_sample& s) {
  int64_t rtt = s.received_ns - s.sent_ns;
  if (best.has_sample() && rtt >= best.rtt_ns) return best;
  return {s.sent_ns + rtt / 2 - s.node_ns, rtt};
}

join_verdict judge_join(const join_terms& terms, const join_claim& claim,
                        const std::optional<earlier_join>& earlier) {
  join_verdict v;
  if (terms.manifest_hash != 0 && claim.manifest_hash != terms.manifest_hash) {
    v.refusal = fmt::format(
        "node '{}' runs manifest {:016x} but the cluster runs {:016x}: start every node from "
        "the same manifest",
        claim.name, claim.manifest_hash, terms.manifest_hash);
    return v;
  }
  if (!terms.model.empty() && claim.model != terms.model) {
    v.refusal = fmt::format("node '{}' serves model '{}' but the cluster serves '{}'", claim.name,
                            claim.model, terms.model);
    return v;
  }
  if (earlier && earlier->up) {
    v.refusal = fmt::format("node '{}' (index {}) has already joined", claim.name, claim.index);
    return v;
  }
  v.same_clock =
      claim.index == terms.node_index || (!claim.host_id.empty() && claim.host_id == terms.host_id);
  v.restarts = earlier ? earlier->restarts + 1 : 0;
  return v;
}

}  // namespace tokenmill
