// The canonical form of a manifest and its hash: what nodes compare to refuse a peer that
// runs another manifest.
#include <fmt/format.h>
#include <xxhash.h>

#include "cluster/manifest.hpp"

namespace tokenmill {

std::string canonical_form(const manifest& m) {
  std::string out;
  // Strings are length-prefixed so that no value can forge a line.
  auto str = [&](std::string_view key, std::string_view v) {
    out += fmt::format("{}={}:{}\n", key, v.size(), v);
  };
  auto num = [&](std::string_view key, auto v) { out += fmt::format("{}={}\n", key, v); };
  str("cluster", m.cluster);
  num("model.sim", m.model.sim);
  if (m.model.sim) {
    auto& c = m.model.sim_cfg;
    num("model.sim.prefill_ns_per_token", c.prefill_ns_per_token);
    num("model.sim.prefill_base_ns", c.prefill_base_ns);
    num("model.sim.decode_base_ns", c.decode_base_ns);
    num("model.sim.decode_per_seq_ns", c.decode_per_seq_ns);
    num("model.sim.decode_per_ctx_token_ns", c.decode_per_ctx_token_ns);
    num("model.sim.slowdown", c.slowdown);
    num("model.sim.vocab_size", c.vocab_size);
    num("model.sim.max_context", c.max_context);
    num("model.sim.seed", c.seed);
    num("model.sim.layout.layers", c.layout.layers);
    num("model.sim.layout.kv_heads", c.layout.kv_heads);
    num("model.sim.layout.head_dim", c.layout.head_dim);
    num("model.sim.layout.dtype_bytes", c.layout.dtype_bytes);
  } else {
    str("model.path", m.model.declared_path);
  }
  str("defaults.engine", m.defaults.engine);
  num("defaults.block_tokens", m.defaults.block_tokens);
  str("defaults.kv_transport", m.defaults.kv_transport);
  if (m.defaults.kv_memory) num("defaults.kv_memory", *m.defaults.kv_memory);
  // Written only when not the default, so that manifests from before it keep their hash.
  if (m.defaults.weights_hugepages != "auto")
    str("defaults.weights_hugepages", m.defaults.weights_hugepages);
  str("frontend.node", m.frontend.node);
  str("frontend.host", m.frontend.host);
  num("frontend.rpc_port", m.frontend.rpc_port);
  num("frontend.http_port", m.frontend.http_port);
  num("router.local_prefill_threshold", m.router.local_prefill_threshold);
  num("router.max_inflight", m.router.max_inflight);
  num("router.max_queued_prompt_tokens", m.router.max_queued_prompt_tokens);
  num("router.migration_limit", m.router.migration_limit);
  num("router.request_timeout_s", m.router.request_timeout_s);
  num("router.stall_timeout_s", m.router.stall_timeout_s);
  num("router.max_queue_ms", m.router.max_queue_ms);
  num("router.admission_window_ms", m.router.admission_window_ms);
  num("router.admission_min_waiting", m.router.admission_min_waiting);
  num("router.prefill_weight", m.router.prefill_weight);
  num("router.queue_weight", m.router.queue_weight);
  num("router.transfer_weight", m.router.transfer_weight);
  num("router.load_weight", m.router.load_weight);
  num("router.prefill_tokens_per_s", m.router.prefill_tokens_per_s);
  num("router.kv_transfer_gbps", m.router.kv_transfer_gbps);
  num("router.load_ms_per_request", m.router.load_ms_per_request);
  num("router.kv_host_onboard_gbps", m.router.kv_host_onboard_gbps);
  num("router.kv_disk_onboard_gbps", m.router.kv_disk_onboard_gbps);
  // Absent at their defaults, so that manifests that do not set them keep their hash.
  if (!m.router.fetch) str("router.fetch", "false");
  if (m.router.fetch_overhead_ms != 0.5)
    num("router.fetch_overhead_ms", m.router.fetch_overhead_ms);
  if (m.router.ttft_slo_ms != 0) num("router.ttft_slo_ms", m.router.ttft_slo_ms);
  str("router.profile", m.router.profile_declared);
  num("failure.heartbeat_ms", m.failure.heartbeat_ms);
  num("failure.connection_timeout_ms", m.failure.connection_timeout_ms);
  num("ucx.op_timeout_ms", m.ucx.op_timeout_ms);
  num("ucx.stall_timeout_ms", m.ucx.stall_timeout_ms);
  num("ucx.window_mib", m.ucx.window_mib);
  // Absent when off, so that manifests without a planner keep their hash.
  if (m.planner) {
    auto& p = *m.planner;
    num("planner.ttft_ms", p.ttft_ms);
    num("planner.itl_ms", p.itl_ms);
    num("planner.percentile", p.percentile);
    num("planner.interval_ms", p.interval_ms);
    num("planner.min_prefill", p.min_prefill);
    num("planner.min_decode", p.min_decode);
    num("planner.cooldown_ms", p.cooldown_ms);
    num("planner.intervals", p.intervals);
    num("planner.high", p.high);
    num("planner.band", p.band);
    num("planner.prefill_jobs_per_worker", p.prefill_jobs_per_worker);
    num("planner.decode_max_batch", p.decode_max_batch);
    num("planner.change_timeout_ms", p.change_timeout_ms);
    // Only when changed, so that manifests written before it keep their hash.
    if (p.rebalance_moves != planner_config{}.rebalance_moves)
      num("planner.rebalance_moves", p.rebalance_moves);
  }
  // Absent when off, so that manifests without a security section keep their hash. Paths
  // are left out: each host may keep its certificates and secret elsewhere.
  if (m.security.tls) str("security.tls", "on");
  if (!m.security.secret_file.empty()) str("security.secret", "on");
  if (m.security.insecure) str("security.insecure", "true");
  num("nodes", m.nodes.size());
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    auto& n = m.nodes[i];
    auto k = [&](std::string_view f) { return fmt::format("nodes[{}].{}", i, f); };
    str(k("name"), n.name);
    str(k("address"), n.address);
    str(k("ssh"), n.ssh);
    num(k("port"), n.port);
    num(k("http_port"), n.http_port);
    num(k("actors"), n.actors.size());
    for (size_t j = 0; j < n.actors.size(); ++j) {
      auto& a = n.actors[j];
      auto ak = [&](std::string_view f) { return fmt::format("nodes[{}].actors[{}].{}", i, j, f); };
      str(ak("role"), to_string(a.kind));
      str(ak("name"), a.name);
      if (auto* w = a.worker()) {
        str(ak("engine"), w->engine);
        num(ak("threads"), w->threads);
        num(ak("device"), w->device);
        num(ak("slowdown"), w->slowdown);
        num(ak("kv_host_blocks"), w->kv_host_blocks);
        num(ak("kv_disk_blocks"), w->kv_disk_blocks);
        str(ak("kv_disk_dir"), w->kv_disk_dir);
        num(ak("recompute_ratio"), w->recompute_ratio);
        str(ak("blend_policy"), w->blend_policy);
      }
      if (auto* p = a.prefill()) {
        num(ak("kv_blocks"), p->kv_blocks);
        num(ak("chunk"), p->chunk);
        num(ak("max_seqs"), p->max_seqs);
      }
      if (auto* d = a.decode()) {
        num(ak("kv_blocks"), d->kv_blocks);
        num(ak("max_batch"), d->max_batch);
        num(ak("local_prefill_budget"), d->local_prefill_budget);
        // Written only when not the default, so that manifests from before it keep their hash.
        if (d->first_token != "prefill") str(ak("first_token"), d->first_token);
      }
    }
  }
  return out;
}

uint64_t manifest_hash(const manifest& m) {
  auto c = canonical_form(m);
  return XXH3_64bits(c.data(), c.size());
}

}  // namespace tokenmill
