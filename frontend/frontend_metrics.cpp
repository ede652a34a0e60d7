#include "frontend/frontend_metrics.hpp"

namespace tokenmill {
namespace {
std::string_view outcome(const generation_summary& g) {
  if (g.error_code != errc::ok) return to_string(g.error_code);
  return to_string(g.reason);
}
}  // namespace

frontend_metrics::frontend_metrics(std::shared_ptr<metrics::registry> reg, std::string node)
    : reg_(std::move(reg)), node_(std::move(node)) {
  itl_ = &reg_->get_histogram("tokenmill_inter_token_latency_seconds",
                              "Gap between consecutive tokens of a request at the frontend",
                              metrics::latency_buckets_seconds(), {{"node", node_}});
}

void frontend_metrics::started(std::string_view api) {
  reg_->get_gauge("tokenmill_requests_in_flight", "Requests accepted and not finished",
                  {{"node", node_}, {"api", std::string(api)}})
      .add(1);
}

void frontend_metrics::finished(std::string_view api, const generation_summary& g, double e2e_s) {
  const std::string a(api);
  reg_->get_gauge("tokenmill_requests_in_flight", "Requests accepted and not finished",
                  {{"node", node_}, {"api", a}})
      .add(-1);
  reg_->get_counter("tokenmill_requests_total", "Requests by API and outcome",
                    {{"node", node_}, {"api", a}, {"outcome", std::string(outcome(g))}})
      .inc();
  reg_->get_counter("tokenmill_prompt_tokens_total", "Prompt tokens of finished requests",
                    {{"node", node_}})
      .inc(g.prompt_tokens);
  reg_->get_counter("tokenmill_generation_tokens_total", "Tokens generated and sent to clients",
                    {{"node", node_}})
      .inc(g.completion_tokens);
  reg_->get_histogram("tokenmill_request_duration_seconds",
                      "End-to-end request time at the frontend (arrival to last byte)",
                      metrics::latency_buckets_seconds(), {{"node", node_}})
      .observe(e2e_s);
  if (g.ttft_ms > 0) {
    reg_->get_histogram("tokenmill_time_to_first_token_seconds",
                        "Server-side time to first token (arrival to first token sent)",
                        metrics::latency_buckets_seconds(), {{"node", node_}})
        .observe(g.ttft_ms / 1e3);
    for (const auto& s : g.stages)
      reg_->get_histogram("tokenmill_ttft_stage_seconds",
                          "Time to first token split by stage (the stages add up to TTFT)",
                          metrics::latency_buckets_seconds(), {{"node", node_}, {"stage", s.name}})
          .observe(s.ms / 1e3);
  }
  for (size_t i = 1; i < g.itl_spikes.size() && i < kItlCauses; ++i)
    if (g.itl_spikes[i] != 0)
      reg_->get_counter("tokenmill_itl_spikes_total",
                        "Inter-token latency spikes by the cause the router attributed",
                        {{"node", node_},
                         {"worker", g.decode_worker},
                         {"cause", std::string(to_string(static_cast<itl_cause>(i)))}})
          .inc(g.itl_spikes[i]);
  // Migrations are counted here, from the summary the router sends (the router's own
  // counters reach only `tokenmill status`): every request passes this point once.
  for (const auto& r : g.migration_reasons)
    reg_->get_counter("tokenmill_request_migrations_total",
                      "Moves of a request to another worker, by why it moved",
                      {{"node", node_}, {"reason", r}})
        .inc();
  // The router ends a request with worker_failed exactly when a worker failure lost it:
  // the migration limit was reached or no worker was left to move it to.
  if (g.error_code == errc::worker_failed)
    reg_->get_counter("tokenmill_requests_lost_total",
                      "Requests failed by a worker failure after migration was exhausted or "
                      "impossible",
                      {{"node", node_}})
        .inc();
  log_->record(api, g, e2e_s);
}

void frontend_metrics::refused(std::string_view api, errc code) {
  reg_->get_counter(
          "tokenmill_requests_total", "Requests by API and outcome",
          {{"node", node_}, {"api", std::string(api)}, {"outcome", std::string(to_string(code))}})
      .inc();
}

void frontend_metrics::token_gap(double seconds) {
  itl_->observe(seconds);
}

namespace {
/// A KV worker's fetch series (fetch instead of recompute): as the worker that pulls a
/// prompt's prefix from a peer, and as the source a peer pulls from.
void export_fetch_metrics(metrics::registry& r, const metrics::label_set& l,
                          const kv_fetch_status& f) {
  auto counter = [&](const char* name, const char* help, double v, const char* outcome = nullptr) {
    auto x = l;
    if (outcome) x.emplace_back("outcome", outcome);
    r.get_counter(name, help, x).advance_to(v);
  };
  const char* fetches_help =
      "KV fetches from peers' prefix caches: started, completed (answer taken) and failed "
      "(given up: the worker computed the tokens)";
  counter("tokenmill_kv_fetches_total", fetches_help, f.started, "started");
  counter("tokenmill_kv_fetches_total", fetches_help, f.completed, "completed");
  counter("tokenmill_kv_fetches_total", fetches_help, f.failed, "failed");
  counter("tokenmill_kv_fetch_blocks_total",
          "KV blocks fetched from peers and reused instead of computed", f.blocks);
  counter("tokenmill_kv_fetch_bytes_total", "Bytes of the KV blocks fetched from peers", f.bytes);
  counter("tokenmill_kv_fetch_missing_blocks_total",
          "KV blocks asked of a peer that it no longer held (evicted meanwhile)", f.missing);
  counter("tokenmill_kv_fetch_seconds_total",
          "Time from asking a peer for KV blocks to taking its answer or giving the fetch up, "
          "summed over completed and failed fetches",
          static_cast<double>(f.time_ns) / 1e9);
  const char* served_help = "KV fetches this worker served to peers as the source, by outcome";
  counter("tokenmill_kv_fetch_served_total", served_help, f.served, "ok");
  counter("tokenmill_kv_fetch_served_total", served_help, f.serve_failures, "failed");
  counter("tokenmill_kv_fetch_served_blocks_total",
          "KV blocks this worker wrote into peers' pools for their fetches", f.served_blocks);
  counter("tokenmill_kv_fetch_served_bytes_total",
          "Bytes of the KV blocks this worker wrote for peers' fetches", f.served_bytes);
}
}  // namespace

void export_worker_metrics(metrics::registry& r, const std::vector<worker_status>& workers) {
  for (const auto& w : workers) {
    metrics::label_set l{
        {"node", w.node}, {"worker", w.name}, {"role", std::string(to_string(w.kind))}};
    r.get_gauge("tokenmill_worker_up", "1 when the worker is up, 0 when it is down", l)
        .set(w.up ? 1 : 0);
    r.get_gauge("tokenmill_worker_queue_depth",
                "Requests waiting at the worker (router: requests in flight)", l)
        .set(w.queued);
    r.get_gauge("tokenmill_worker_running",
                "Sequences in the running batch (decode) or prompts computing (prefill)", l)
        .set(w.running);
    if (w.kv_total > 0) {
      r.get_gauge("tokenmill_kv_blocks_used", "KV-cache blocks in use", l).set(w.kv_used);
      r.get_gauge("tokenmill_kv_blocks_capacity", "KV-cache blocks in the worker's pool", l)
          .set(w.kv_total);
    }
    if (w.kind == role::prefill || w.kind == role::decode) {
      r.get_counter("tokenmill_worker_tokens_total",
                    "Prompt tokens computed (prefill) or tokens generated (decode)", l)
          .advance_to(static_cast<double>(w.tokens_out));
      r.get_counter("tokenmill_worker_requests_total", "Requests the worker finished", l)
          .advance_to(static_cast<double>(w.completed));
      r.get_counter("tokenmill_kv_bytes_total",
                    "KV bytes sent (prefill) or received (decode) between workers", l)
          .advance_to(static_cast<double>(w.kv_bytes));
      r.get_gauge("tokenmill_prefix_cache_hit_rate",
                  "Prompt blocks found in the worker's prefix cache / blocks looked up", l)
          .set(w.prefix_lookup_blocks == 0 ? 0
                                           : static_cast<double>(w.prefix_hit_blocks) /
                                                 static_cast<double>(w.prefix_lookup_blocks));
      // Chunk reuse (issue 17): the tokens of prompts given as segments, looked up in the
      // worker's chunk cache, found there, and of those recomputed.
      r.get_counter("tokenmill_chunk_lookup_tokens_total",
                    "Prompt tokens of segmented prompts looked up in the worker's chunk cache", l)
          .advance_to(static_cast<double>(w.chunk_lookup_tokens));
      r.get_counter("tokenmill_chunk_hit_tokens_total",
                    "Prompt tokens whose KV the worker reused from a cached chunk", l)
          .advance_to(static_cast<double>(w.chunk_hit_tokens));
      r.get_counter("tokenmill_chunk_recomputed_tokens_total",
                    "Reused chunk tokens the worker recomputed (selective recompute)", l)
          .advance_to(static_cast<double>(w.chunk_recomputed_tokens));
      export_fetch_metrics(r, l, w.fetch);
    }
    for (const auto& t : w.tiers) {
      auto tl = l;
      tl.emplace_back("tier", t.tier);
      r.get_counter("tokenmill_kv_tier_hits_total",
                    "KV blocks onboarded from a second-tier level instead of recomputed", tl)
          .advance_to(static_cast<double>(t.hits));
      auto in = tl, out = tl;
      in.emplace_back("direction", "in");
      out.emplace_back("direction", "out");
      const char* bytes_help =
          "KV bytes moved into a second-tier level (in) or back into the pool (out)";
      r.get_counter("tokenmill_kv_tier_bytes_total", bytes_help, in)
          .advance_to(static_cast<double>(t.bytes_in));
      r.get_counter("tokenmill_kv_tier_bytes_total", bytes_help, out)
          .advance_to(static_cast<double>(t.bytes_out));
      r.get_counter("tokenmill_kv_tier_evictions_total",
                    "KV blocks pushed out of a second-tier level (host: to disk or dropped)", tl)
          .advance_to(static_cast<double>(t.evictions));
      r.get_gauge("tokenmill_kv_tier_blocks_used", "KV blocks held in a second-tier level", tl)
          .set(t.used);
      r.get_gauge("tokenmill_kv_tier_blocks_capacity", "KV blocks a second-tier level holds", tl)
          .set(t.capacity);
    }
  }
}

void export_planner_metrics(metrics::registry& r, const std::string& node,
                            const planner_status& p) {
  if (!p.enabled && p.decisions == 0 && p.drains == 0 && p.changes_failed == 0 &&
      p.flips_to_decode == 0 && p.flips_to_prefill == 0)
    return;
  const char* flips_help = "Workers that changed role in place, by old and new role";
  r.get_counter("tokenmill_role_flips_total", flips_help,
                {{"node", node}, {"from", "prefill"}, {"to", "decode"}})
      .advance_to(static_cast<double>(p.flips_to_decode));
  r.get_counter("tokenmill_role_flips_total", flips_help,
                {{"node", node}, {"from", "decode"}, {"to", "prefill"}})
      .advance_to(static_cast<double>(p.flips_to_prefill));
  r.get_counter("tokenmill_planner_decisions_total",
                "Decisions of the planner in the supervisor (flip or keep), one per interval",
                {{"node", node}})
      .advance_to(static_cast<double>(p.decisions));
  r.get_counter("tokenmill_role_change_failures_total",
                "Role changes and drains that failed or were not answered in time",
                {{"node", node}})
      .advance_to(static_cast<double>(p.changes_failed));
  r.get_counter("tokenmill_drained_workers_total", "Workers drained (tokenmill drain)",
                {{"node", node}})
      .advance_to(static_cast<double>(p.drains));
}

nlohmann::ordered_json planner_to_json(const planner_status& p) {
  nlohmann::ordered_json j;
  j["enabled"] = p.enabled;
  j["decisions"] = p.decisions;
  j["flips_to_prefill"] = p.flips_to_prefill;
  j["flips_to_decode"] = p.flips_to_decode;
  j["changes_failed"] = p.changes_failed;
  j["drains"] = p.drains;
  j["last_decision"] = p.last_decision;
  auto evs = nlohmann::ordered_json::array();
  for (const auto& e : p.events)
    evs.push_back({{"t_ns", e.t_ns},
                   {"kind", e.kind},
                   {"worker", e.worker},
                   {"from", std::string(to_string(e.from))},
                   {"to", std::string(to_string(e.to))},
                   {"took_ms", e.took_ns / 1e6},
                   {"why", e.why}});
  j["events"] = std::move(evs);
  return j;
}

void export_transport_metrics(metrics::registry& r, const std::string& node,
                              std::string_view transport, const kv_transport_stats& s) {
  metrics::label_set l{{"node", node}, {"transport", std::string(transport)}};
  auto with = [&](const char* k, const char* v) {
    auto x = l;
    x.emplace_back(k, v);
    return x;
  };
  r.get_counter("tokenmill_kv_transfer_bytes_total",
                "KV bytes this node's transport wrote to peers (completed writes)", l)
      .advance_to(static_cast<double>(s.bytes_written));
  r.get_counter("tokenmill_kv_transfers_total", "KV writes by outcome", with("outcome", "ok"))
      .advance_to(static_cast<double>(s.writes_completed));
  r.get_counter("tokenmill_kv_transfers_total", "KV writes by outcome", with("outcome", "failed"))
      .advance_to(static_cast<double>(s.writes_failed));
  r.get_counter("tokenmill_kv_transfer_timeouts_total",
                "KV writes failed because they did not complete within the op timeout", l)
      .advance_to(static_cast<double>(s.timeouts));
  r.get_counter("tokenmill_kv_transfer_stalls_total",
                "KV writes that made no progress for the stall timeout while the peer was "
                "still connected",
                l)
      .advance_to(static_cast<double>(s.stalls));
  r.get_counter("tokenmill_kv_transfer_peers_refused_total",
                "KV writes and connects refused because the supervisor had not announced the "
                "peer's pool",
                l)
      .advance_to(static_cast<double>(s.peers_refused));
  r.get_gauge("tokenmill_kv_transfers_in_flight", "KV writes started and not yet completed", l)
      .set(s.writes_in_flight);
  r.get_gauge("tokenmill_kv_transfers_queued",
              "KV writes waiting for room in the transport's window of bytes in flight", l)
      .set(s.writes_queued);
  r.get_gauge("tokenmill_kv_transfer_bytes_in_flight", "Bytes of the KV writes in flight", l)
      .set(static_cast<double>(s.bytes_in_flight));
}

}  // namespace tokenmill
