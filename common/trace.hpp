#pragma once
/// Timing metadata carried by every request-scoped message (DESIGN.md §3).
///
/// A trace is a list of hops {stage, node, t_ns}. Stages of the time-to-first-token path
/// are declared in causal order, so a request's TTFT breakdown is the list of intervals
/// between consecutive stamps on that path: by construction the stages add up exactly to
/// the TTFT measured between the first and the last stamp.
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

/// Where a request was when a stamp was taken. The enumerators up to `first_token_client`
/// are the TTFT path, in causal order; the rest describe decoding. A request that moves
/// before its first token keeps its stamps up to router_received and is routed again, so
/// the time lost on the failed attempt falls in the `routing` interval (router_received ->
/// routed); `migrated` marks each move.
enum class stage : uint8_t {
  client_sent,      ///< client library sent the generate call (client clock)
  arrived,          ///< frontend received and validated the call
  router_received,  ///< router took the request from its mailbox
  routed,           ///< router picked workers and sent the assignment
  decode_reserved,  ///< decode worker reserved the request's KV blocks
  prefill_queued,   ///< the prefill job entered a prefill queue (remote or local)
  prefill_started,  ///< the first prompt chunk started computing
  prefill_done,     ///< the last prompt chunk finished computing
  kv_pushed,        ///< every KV block was written to the decode worker (flushed)
  /// The decode worker released the prefill worker's first token, held until the sequence
  /// joined its first decode step (first-token release `decode`; absent otherwise).
  first_token_released,
  first_token_router,  ///< router received the first token
  first_token_sent,    ///< frontend handed the first token to the client stream
  first_token_client,  ///< client library received the first token (client clock)
  kv_ready,            ///< decode worker received and verified all prompt blocks
  decode_admitted,     ///< decode worker added the sequence to its running batch
  finished,            ///< decode worker finished the sequence
  migrated,            ///< router moved the request to another worker (one per move)
  count_               ///< number of stages; not a stage
};

/// Stable snake_case name of a stage.
std::string_view to_string(stage s);

/// The stage named `name` (as to_string gives it), if any.
std::optional<stage> stage_from_string(std::string_view name);

/// Name of the interval that ends at `s` in a TTFT breakdown (for example `prefill_compute`
/// for the interval ending at prefill_done).
std::string_view interval_name(stage s);

/// True for stages on the time-to-first-token path.
constexpr bool on_ttft_path(stage s) {
  return s <= stage::first_token_client;
}

/// One stamp: which stage, on which node, at which time on that node's steady clock.
struct hop {
  stage where = stage::arrived;
  uint32_t node = 0;
  int64_t t_ns = 0;
};

/// The trace of one request.
struct trace {
  request_id id = 0;
  std::vector<hop> hops;

  /// Appends a stamp taken now on this host's steady clock.
  void stamp(stage s, uint32_t node = 0);
  /// Appends a stamp with an explicit time (for example a client-side time).
  void stamp_at(stage s, int64_t t_ns, uint32_t node = 0);
  /// Appends every hop of `other` (same request, another branch of the flow).
  void merge(const trace& other);
  /// Time of the first stamp of stage `s`, if any.
  std::optional<int64_t> time_of(stage s) const;
};

/// One interval of a breakdown: the stage it ends at and its length.
struct stage_interval {
  stage ends_at;
  int64_t duration_ns;
  std::string_view name() const { return interval_name(ends_at); }
};

/// Clock offset of a node relative to the reference timeline (ns to add to its stamps).
/// Every node is 0 within one host; the supervisor estimates offsets across hosts.
using clock_offsets = std::vector<int64_t>;

/// The TTFT breakdown of `t`: for the TTFT-path stages present (first stamp of each),
/// ordered causally, the intervals between consecutive stamps. Their sum equals the
/// time between the first and last TTFT-path stamp. Stamps are shifted by `offsets`
/// (indexed by node; missing entries mean 0).
std::vector<stage_interval> ttft_breakdown(const trace& t, const clock_offsets& offsets = {});

/// Sum of the intervals' durations.
int64_t total_ns(const std::vector<stage_interval>& intervals);

}  // namespace tokenmill
