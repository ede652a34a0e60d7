#pragma once
/// The supervisor's decisions, free of CAF (STYLE.md §2): when the cluster can serve, how a
/// node's clock offset is estimated from probes, and whether a node may join. The
/// supervisor actor (supervisor_actor.cpp) receives, monitors and sends; it asks these.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "common/ids.hpp"

namespace tokenmill {

// ---------------------------------------------------------------- readiness

/// What readiness needs to know of one registered member.
struct member_state {
  role kind = role::decode;
  bool up = true;  ///< false once the supervisor saw it go down
};

/// Ready means "can serve": at least `expected_workers` actors have registered once (the
/// cluster came up as the manifest says; down members still count), and a router and a
/// decode worker are up now. A lost prefill worker, kv-store or spare decode worker does not
/// take a serving cluster out of a load balancer's rotation (the router prefills on a
/// decode worker when no prefill worker is left). `expected_workers` 0: any number.
bool cluster_ready(std::span<const member_state> members, size_t expected_workers);

// ---------------------------------------------------------------- clock offsets

/// One NTP-style probe of a node's clock, every stamp a steady-clock reading in ns.
struct clock_sample {
  int64_t sent_ns = 0;      ///< the supervisor sent the ping (its clock)
  int64_t node_ns = 0;      ///< the node answered (the node's clock)
  int64_t received_ns = 0;  ///< the answer arrived (the supervisor's clock)
};

/// The best estimate of one node's clock offset so far.
struct clock_estimate {
  int64_t offset_ns = 0;  ///< add to the node's stamps to land on the supervisor's clock
  int64_t rtt_ns = -1;    ///< round trip of the sample it comes from, ns (-1: no sample yet)

  bool has_sample() const { return rtt_ns >= 0; }
};

/// Folds one sample into `best`: the sample with the smallest round trip wins, since it
/// bounds the offset's error by half that round trip. The offset assumes the node answered
/// half-way through the round trip.
clock_estimate fold_clock_sample(clock_estimate best, const clock_sample& s);

// ---------------------------------------------------------------- joins

/// What every joining node must agree with: the supervisor's own node and cluster.
struct join_terms {
  uint64_t manifest_hash = 0;  ///< 0: any manifest
  std::string model;           ///< empty: any model
  uint32_t node_index = 0;     ///< the supervisor's node (its clock is the reference)
  std::string host_id;         ///< host_clock_id() of the supervisor's host
};

/// What a joining node says of itself (the CAF-free part of join_node).
struct join_claim {
  std::string name;
  uint32_t index = 0;          ///< its index in the manifest
  uint64_t manifest_hash = 0;  ///< manifest_hash() of the manifest it runs
  std::string model;           ///< the model its engines serve
  std::string host_id;         ///< host_clock_id(): equal ids share one monotonic clock
};

/// What the supervisor knew of a node index before this join.
struct earlier_join {
  bool up = false;        ///< its process is still up (a second join is refused)
  uint32_t restarts = 0;  ///< joins after its first
};

/// The supervisor's answer to a join.
struct join_verdict {
  std::string refusal;      ///< empty: accepted; else why not, for the node's operator
  bool same_clock = false;  ///< shares the supervisor's clock: offset 0, no probing
  uint32_t restarts = 0;    ///< joins after the first (the launcher restarted the node)

  bool accepted() const { return refusal.empty(); }
};

/// Judges a join: refused when the node runs another manifest or model, or when its index
/// is still up; accepted otherwise. A node whose earlier process is down joins again: a
/// restart.
join_verdict judge_join(const join_terms& terms, const join_claim& claim,
                        const std::optional<earlier_join>& earlier);

}  // namespace tokenmill
