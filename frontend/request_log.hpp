#pragma once
/// The frontend's record of recently finished requests (DESIGN.md §7), and what it tells
/// about the cluster: a bounded, thread-safe ring of generation summaries (both APIs record
/// into it through frontend_metrics::finished), their JSON form for /debug/requests, a
/// per-worker aggregate over a recent window for /debug/snapshot and `tokenmill top`
/// (frontend/bottleneck.hpp names the worker that limits it). No CAF here.
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/api_types.hpp"

namespace tokenmill {

/// One finished request as the frontend saw it.
struct request_record {
  generation_summary summary;
  std::string api;              ///< "rpc" or "http"
  int64_t arrival_unix_ms = 0;  ///< wall clock at arrival
  int64_t arrival_ns = 0;       ///< frontend steady clock at arrival
  int64_t end_ns = 0;           ///< frontend steady clock when it finished
};

constexpr size_t kItlCauses = static_cast<size_t>(itl_cause::count_);
using spike_counts = std::array<uint64_t, kItlCauses>;

/// The itl_cause named `name` (as to_string gives it), if any.
std::optional<itl_cause> itl_cause_from_string(std::string_view name);

/// Every field of `g`: id, reason, error_code, error, tokens, ttft_ms, itl stats, stages
/// (ordered [{name, ms}]), hops [{stage, node, t_ns}], prefill_worker, decode_worker,
/// itl_spikes {cause: n} (non-zero causes), steps [{index, released_ns, step_start_ns,
/// step_end_ns, batch, prefill_tokens, cause}], migrations, migration_reasons [reason],
/// routing [{worker, role, chosen, eligible, local, cached_tokens, prefill_ms, queue_ms,
/// transfer_ms, load_ms, total_ms}].
nlohmann::ordered_json to_json(const generation_summary& g);
/// The inverse of to_json (unknown or missing fields keep their defaults); nullopt when
/// `j` is not an object.
std::optional<generation_summary> summary_from_json(const nlohmann::json& j);

/// to_json(summary) plus api, arrival_unix_ms, arrival_ns, end_ns, e2e_ms.
nlohmann::ordered_json to_json(const request_record& r);
std::optional<request_record> record_from_json(const nlohmann::json& j);

/// One worker over the snapshot's window. Times are means per request the worker served
/// (ms); shares are fractions of the window's mean TTFT.
struct worker_snapshot {
  std::string name;
  std::string node;
  role kind = role::decode;
  bool in_status = false;  ///< the supervisor's status listed it (else: only seen in summaries)
  bool up = true;
  uint32_t queued = 0, running = 0, kv_used = 0, kv_total = 0;
  uint32_t requests = 0;  ///< successful requests of the window it served
  /// Stage time attributed to it, mean per request it served (prefill: queue + compute +
  /// transfer; decode: reserve + to_router, plus the prefill stages of local prefills;
  /// router: frontend_to_router + routing + to_prefill).
  double stage_ms = 0;
  double ttft_share = 0;  ///< its attributed stage time / (window requests x mean TTFT)
  // prefill (and decode workers that prefilled locally)
  double prefill_queue_ms = 0, prefill_compute_ms = 0, kv_transfer_ms = 0;
  double compute_ms_per_1k_tokens = 0;  ///< prefill_compute per 1000 prompt tokens
  double transfer_gbps = 0;             ///< prompt KV bytes / kv_transfer time (0: unknown)
  // decode
  double decode_reserve_ms = 0, to_router_ms = 0;
  double itl_p50_ms = 0, itl_p99_ms = 0;
  uint64_t tokens = 0;  ///< completion tokens of its requests
  spike_counts spikes{};
};

/// The cluster over the last `window_s` seconds.
struct cluster_snapshot {
  double window_s = 30;
  bool has_status = false;
  std::string status_error;
  std::string cluster;
  bool ready = false;
  uint32_t requests = 0;  ///< finished in the window, successfully, with a first token
  uint32_t failed = 0;    ///< finished in the window with an error or cancelled
  double mean_ttft_ms = 0;
  double itl_p50_ms = 0, itl_p99_ms = 0;
  std::vector<stage_ms> stages;  ///< mean per request, in causal order
  spike_counts spikes{};
  std::vector<worker_snapshot> workers;  ///< status order, then workers only in summaries
  /// Of `requests`, those whose routing chose a worker holding part of the prompt.
  uint32_t routed_cached = 0;
  /// The routing decision of the newest request in the window that has one: every
  /// candidate's cost-model score (0 / empty: none).
  request_id routing_request = 0;
  std::vector<routing_score> routing;
};

/// The snapshot as /debug/snapshot returns it (without the bottleneck fields).
nlohmann::ordered_json to_json(const cluster_snapshot& s);

/// Aggregates `records` that ended within `window_s` before `now_ns` (frontend steady
/// clock) per worker. `status` (may be null) supplies every worker's live state; KV
/// transfer rates need `block_bytes`/`block_tokens` (0: unknown).
cluster_snapshot make_snapshot(const std::vector<request_record>& records, double window_s,
                               const cluster_status* status, int64_t now_ns,
                               uint32_t block_tokens = 0, uint64_t block_bytes = 0);

/// The ring of recently finished requests. Thread-safe.
class request_log {
 public:
  explicit request_log(size_t capacity = 2048);

  /// Records a finished request (the oldest drops out when full). `end_ns` 0 = now;
  /// arrival = end - e2e.
  void record(std::string_view api, const generation_summary& g, double e2e_s, int64_t end_ns = 0);
  void record(request_record r);
  /// The newest `limit` records, oldest first.
  std::vector<request_record> recent(size_t limit) const;
  size_t size() const;
  size_t capacity() const { return capacity_; }

  /// The model's KV block layout, for transfer rates.
  void set_block_layout(uint32_t block_tokens, uint64_t block_bytes);

  /// make_snapshot over the records of the last `window_s` s, at now.
  cluster_snapshot snapshot(double window_s, const cluster_status* status) const;

 private:
  mutable std::mutex mu_;
  size_t capacity_;
  std::deque<request_record> ring_;
  uint32_t block_tokens_ = 0;
  uint64_t block_bytes_ = 0;
};

}  // namespace tokenmill
