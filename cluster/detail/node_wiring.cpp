#include "cluster/detail/node_wiring.hpp"

#include <algorithm>

#include <caf/all.hpp>

#include "common/clock.hpp"

namespace tokenmill::detail {

void configure_scheduler(caf::actor_system_config& cfg, size_t threads) {
  cfg.set("scheduler.max-threads", threads);
  // No moderate phase: after its aggressive polls an idle worker waits on its condition
  // variable (woken by an enqueue from outside) instead of napping 50 us at a time. Those
  // naps woke each worker ~10 times per message, and every wake-up took a core from the
  // engine's compute threads in the middle of a step (perf: clock_nanosleep, timer
  // interrupts and schedule() inside the GEMV kernels): 125m q4_k `serve`, concurrency 1,
  // ITL p50 1.70-1.73 ms with 10 attempts, 1.39-1.62 ms without, the engine's step 1.16.
  cfg.set("work-stealing.moderate-poll-attempts", size_t{0});
  // An idle worker wakes 20 times a second to steal (CAF's default: 100). A wake-up is
  // ~0.005% of a core per worker, and a job queued behind a busy worker waits at most
  // this long for an idle one to take it (1 s measured 0.03% idle CPU against 0.10% here,
  // but that delay lands on request latency under load).
  cfg.set("work-stealing.relaxed-sleep-duration", caf::timespan{std::chrono::milliseconds(50)});
}

caf::actor spawn_node_supervisor(caf::actor_system& sys, const manifest& m, uint32_t index,
                                 const std::string& model_name, const std::vector<uint8_t>& secret,
                                 bool members_from_joined_nodes,
                                 std::shared_ptr<const node_certificates> certificates) {
  if (m.nodes.at(index).count(role::supervisor) == 0) return {};
  supervisor_config sc;
  sc.cluster = m.cluster;
  sc.manifest_hash = manifest_hash(m);
  sc.model = model_name;
  for (const auto& n : m.nodes)
    for (const auto& a : n.actors)
      sc.expected_workers += a.kind != role::supervisor;
  sc.node_index = index;
  sc.host_id = host_clock_id();
  sc.planner = m.planner;
  if (m.planner) sc.change_timeout = std::chrono::milliseconds(m.planner->change_timeout_ms);
  sc.secret = secret;
  sc.members_from_joined_nodes = members_from_joined_nodes;
  sc.certificates = std::move(certificates);
  return spawn_supervisor(sys, sc);
}

result<node_actors> spawn_node_actors(caf::actor_system& sys, const manifest& m, uint32_t index,
                                      const caf::actor& supervisor, node_services& services,
                                      std::vector<caf::actor>& spawned) {
  const auto& node = m.nodes.at(index);
  node_actors out;
  worker_id next = index * 256;
  auto info = [&](const manifest_actor& a) {
    worker_info w;
    w.id = next++;
    w.kind = a.kind;
    w.name = a.name;
    w.node = node.name;
    w.node_index = index;
    return w;
  };
  auto keep = [&](caf::actor a) {
    spawned.push_back(a);
    out.workers.push_back(a);
    return a;
  };
  for (const auto& a : node.actors)
    if (a.kind == role::kv_store) out.kv_store = keep(spawn_kv_store(sys, info(a), supervisor));
  // What a worker serves with after a role change (change_role): the settings of the
  // node's first worker of that role, else the defaults. The KV pool stays as it was built.
  prefill_config as_prefill;
  decode_config as_decode;
  for (auto it = node.actors.rbegin(); it != node.actors.rend(); ++it) {
    if (it->prefill()) as_prefill = to_prefill_config(*it->prefill());
    if (it->decode()) as_decode = to_decode_config(*it->decode());
  }
  as_decode.kv_drain_timeout = as_prefill.kv_drain_timeout = services.kv_drain_timeout;
  as_prefill.grammars = as_decode.grammars = services.grammars;
  for (const auto& a : node.actors) {
    out.names.push_back(a.name);
    switch (a.kind) {
      case role::supervisor:
      case role::kv_store:
      case role::frontend:
        break;
      case role::router:
        out.router = keep(spawn_router(sys, info(a), services.router, supervisor));
        break;
      case role::prefill: {
        auto eng = services.engine_for(a);
        if (!eng) return eng.error();
        auto pc = to_prefill_config(*a.prefill());
        pc.grammars = services.grammars;
        pc.kv_drain_timeout = services.kv_drain_timeout;
        if (!a.prefill()->kv_blocks_given && services.prefill_blocks)
          pc.num_blocks = *services.prefill_blocks;
        keep(spawn_prefill(sys, info(a), pc, std::move(*eng), services.transport, supervisor,
                           as_decode));
        break;
      }
      case role::decode: {
        auto eng = services.engine_for(a);
        if (!eng) return eng.error();
        auto dc = to_decode_config(*a.decode());
        dc.kv_drain_timeout = services.kv_drain_timeout;
        dc.grammars = services.grammars;
        if (!a.decode()->kv_blocks_given && services.decode_blocks)
          dc.num_blocks = *services.decode_blocks;
        keep(spawn_decode(sys, info(a), dc, std::move(*eng), services.transport, supervisor,
                          out.kv_store, as_prefill));
        break;
      }
    }
  }
  return out;
}

std::shared_ptr<grammar::grammar_cache> make_grammar_cache(const tokenizer& tok,
                                                           uint32_t model_vocab, token_id eos) {
  const uint32_t n = std::max(tok.vocab_size(), model_vocab);
  std::vector<std::string> pieces(n);
  for (uint32_t i = 0; i < tok.vocab_size(); ++i)
    pieces[i] = tok.piece(static_cast<token_id>(i));
  if (eos >= 0 && static_cast<uint32_t>(eos) < n) pieces[size_t(eos)].clear();
  return std::make_shared<grammar::grammar_cache>(
      std::make_shared<const grammar::vocabulary>(std::move(pieces), eos));
}

result<frontend_servers> start_frontend(caf::actor_system& sys, const caf::actor& router,
                                        const caf::actor& supervisor,
                                        std::shared_ptr<const tokenizer> tok,
                                        const model_info& model, frontend_plan plan,
                                        std::shared_ptr<kv_transport> transport) {
  frontend_servers out;
  auto fm =
      std::make_shared<frontend_metrics>(std::make_shared<metrics::registry>(), plan.node_name);
  out.rpc = std::make_unique<rpc_server>(sys, router, supervisor, tok, model, plan.rpc, fm);
  auto port = out.rpc->start();
  if (!port) return port.error();
  out.rpc_port = *port;
  if (!plan.http) return out;
  auto chat = choose_chat_format(plan.chat_template, plan.model_chat_template);
  if (!chat) return chat.error();
  auto& hc = *plan.http;
  hc.chat_format = *chat;
  hc.collect_node_metrics = [transport, name = plan.node_name](metrics::registry& r) {
    export_transport_metrics(r, name, transport->name(), transport->stats());
  };
  out.http = std::make_unique<http_server>(sys, router, supervisor, tok, model, hc, fm);
  auto hport = out.http->start();
  if (!hport) return hport.error();
  out.http_port = *hport;
  return out;
}

}  // namespace tokenmill::detail
