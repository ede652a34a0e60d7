#pragma once
/// The frontend's Prometheus metrics, shared by the RPC and HTTP servers of a node:
/// requests by API and outcome, tokens in and out, TTFT, per-stage TTFT, ITL and
/// end-to-end latency histograms, requests in flight. Thread-safe (the registry is).
#include <memory>
#include <string>
#include <string_view>

#include "common/api_types.hpp"
#include "common/metrics.hpp"
#include "frontend/request_log.hpp"
#include "transport/kv_transport.hpp"

namespace tokenmill {

/// Sets every worker's series in `r` from its status: up, queue depth, running batch, KV
/// blocks used/total, and (prefill, decode) tokens, requests, KV bytes moved and prefix
/// hit rate, KV fetched from peers (fetches by outcome, blocks, bytes, missing blocks, time)
/// and served to them (fetches by outcome, blocks, bytes), and each second-tier level's
/// hits, bytes moved, evictions and occupancy (label `tier`), labelled by node, worker and
/// role.
void export_worker_metrics(metrics::registry& r, const std::vector<worker_status>& workers);

/// Sets the planner's series from the supervisor's counts (once a planner or a drain ran),
/// labelled by the exporting `node`: tokenmill_role_flips_total{from,to},
/// tokenmill_planner_decisions_total, tokenmill_role_change_failures_total and
/// tokenmill_drained_workers_total.
void export_planner_metrics(metrics::registry& r, const std::string& node, const planner_status& p);

/// The planner's status as JSON (for /debug/snapshot and `tokenmill status --json`).
nlohmann::ordered_json planner_to_json(const planner_status& p);

/// Sets the node's KV transport series from its stats, labelled by node and transport:
/// bytes and transfers completed or failed, timeouts, stalls (no progress while the peer
/// is connected), and the transfers in flight and queued behind the window.
void export_transport_metrics(metrics::registry& r, const std::string& node,
                              std::string_view transport, const kv_transport_stats& s);

class frontend_metrics {
 public:
  frontend_metrics(std::shared_ptr<metrics::registry> reg, std::string node);

  /// A request was accepted (validated and sent to the router) through `api`.
  void started(std::string_view api);
  /// A request ended: outcome, usage, TTFT and its stages, ITL spikes by cause,
  /// end-to-end time; the request goes into log().
  void finished(std::string_view api, const generation_summary& g, double e2e_s);
  /// A request was refused before reaching the router (`code`: invalid_request, ...).
  void refused(std::string_view api, errc code);
  /// One gap between consecutive tokens as the frontend received them.
  void token_gap(double seconds);

  metrics::registry& registry() { return *reg_; }
  const std::string& node() const { return node_; }
  /// The node's recently finished requests (both APIs), for /debug/*.
  request_log& log() { return *log_; }
  const std::shared_ptr<request_log>& log_ptr() const { return log_; }

 private:
  std::shared_ptr<metrics::registry> reg_;
  std::string node_;
  metrics::histogram* itl_;
  std::shared_ptr<request_log> log_ = std::make_shared<request_log>();
};

}  // namespace tokenmill
