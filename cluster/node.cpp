#include "cluster/node.hpp"

#include <atomic>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include "actors/actors.hpp"
#include "actors/supervisor/join_policy.hpp"
#include "actors/type_ids.hpp"
#include "cluster/control_gate.hpp"
#include "cluster/detail/node_wiring.hpp"
#include "cluster/security.hpp"
#include "cluster/serving_defaults.hpp"
#include "common/clock.hpp"
#include "engine/engine_factory.hpp"
#include "frontend/api_keys.hpp"
#include "frontend/auth_throttle.hpp"
#include "frontend/http_server.hpp"
#include "frontend/metrics_server.hpp"
#include "frontend/rpc_server.hpp"
#include "transport/ucx_transport.hpp"

namespace tokenmill {
namespace {

/// Pool sizes for the workers of `node` that give no kv_blocks, from defaults.kv_memory:
/// what the workers with kv_blocks take comes off the budget first.
result<kv_pool_plan> node_kv_pools(const manifest& m, const manifest_node& node,
                                   const model_info& model) {
  kv_demand d;
  d.block_bytes = model.layout.block_bytes();
  d.block_tokens = model.layout.block_tokens;
  d.max_context = model.max_context;
  uint64_t fixed = 0;
  bool seen_p = false, seen_d = false;
  for (const auto& a : node.actors) {
    if (const auto* p = a.prefill()) {
      if (p->kv_blocks_given) {
        fixed += uint64_t{p->kv_blocks} * d.block_bytes;
      } else {
        ++d.prefill_workers;
        if (!seen_p) d.prefill_max_seqs = p->max_seqs;
        seen_p = true;
      }
    } else if (const auto* dec = a.decode()) {
      if (dec->kv_blocks_given) {
        fixed += uint64_t{dec->kv_blocks} * d.block_bytes;
      } else {
        ++d.decode_workers;
        if (!seen_d) d.decode_max_batch = dec->max_batch;
        seen_d = true;
      }
    }
  }
  const uint64_t budget = *m.defaults.kv_memory;
  if (fixed > budget)
    return error_info{
        errc::invalid_request,
        fmt::format("{}: defaults.kv_memory {} is less than the {} that node '{}' "
                    "workers with kv_blocks take",
                    m.path, format_memory_size(budget), format_memory_size(fixed), node.name)};
  auto plan = plan_kv_pools(d, budget - fixed, physical_memory_bytes(), 0);
  if (!plan)
    return error_info{errc::invalid_request, fmt::format("{}: defaults.kv_memory: node '{}': {}",
                                                         m.path, node.name, plan.error().message)};
  return plan;
}

struct agent_state {
  caf::actor supervisor;
  uint32_t index = 0;                                     ///< this node's index in the manifest
  std::vector<std::pair<std::string, uint16_t>> control;  ///< every node's control port
  std::set<uint32_t> linked;  ///< nodes this one opened a direct connection to
  static inline const char* name = "node_agent";
};

/// The node's one published actor: answers clock probes, hands out the supervisor and
/// opens the direct connections between nodes. CAF's automatic connections are off (they
/// listen on an extra port on every interface, which no gate guards), so each node
/// connects to every up node of a lower index itself, through that node's control port.
caf::behavior node_agent(caf::stateful_actor<agent_state>* self, caf::actor sup, uint32_t index,
                         std::vector<std::pair<std::string, uint16_t>> control,
                         uint32_t sup_index) {
  self->state.supervisor = std::move(sup);
  self->state.index = index;
  self->state.control = std::move(control);
  // The join already connected this node to the supervisor's: a second connection there
  // would be redundant, and over TLS CAF 0.17 kills the first one (NOTES.md).
  if (sup_index != index) self->state.linked.insert(sup_index);
  return {
      [](ping_atom, int64_t t0) { return caf::make_message(t0, now_ns()); },
      [self](supervisor_atom) { return self->state.supervisor; },
      [self](const node_peers& p) {
        auto& st = self->state;
        std::set<uint32_t> up(p.up.begin(), p.up.end());
        // A node that went down may come back as a new process: connect again then.
        std::erase_if(st.linked, [&](uint32_t i) { return !up.count(i); });
        for (auto i : up) {
          if (i >= st.index || i >= st.control.size() || st.linked.count(i)) continue;
          st.linked.insert(i);
          const auto& [host, port] = st.control[i];
          // With TLS, CAF's OpenSSL module makes the connection (mutual TLS to the peer's
          // control gate); both managers share one BASP broker.
          auto& sys = self->system();
          auto mm = sys.has_openssl_manager() ? sys.openssl_manager().actor_handle()
                                              : sys.middleman().actor_handle();
          self->request(mm, std::chrono::seconds(10), caf::connect_atom::value, host, port)
              .then([](const caf::node_id&, const caf::strong_actor_ptr&,
                       const std::set<std::string>&) {},
                    [self, i, host = host, port = port](caf::error& e) {
                      // Messages still reach that node through the supervisor's node; the
                      // next membership change tries again.
                      self->state.linked.erase(i);
                      spdlog::warn("node: no direct connection to {}:{}: {}", host, port,
                                   self->system().render(e));
                    });
        }
      },
  };
}

/// Watches the supervisor; flips a flag when it goes down.
caf::behavior supervisor_watch(caf::event_based_actor* self, caf::actor sup,
                               std::shared_ptr<std::atomic<bool>> lost) {
  self->monitor(sup);
  self->set_down_handler([self, lost](caf::down_msg& dm) {
    spdlog::error("node: lost the supervisor ({})", caf::to_string(dm.reason));
    *lost = true;
    self->quit();
  });
  return {[](int) {}};
}

}  // namespace

struct cluster_node::impl {
  caf::actor_system_config caf_cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<caf::actor> actors;
  std::unique_ptr<rpc_server> rpc;
  std::unique_ptr<http_server> http;
  std::unique_ptr<metrics_server> metrics;
  std::unique_ptr<control_gate> gate;
  std::shared_ptr<api_keys> keys;   ///< the frontend's; null: none or not the frontend's node
  std::vector<caf::actor> workers;  ///< actors that answer status_atom with a worker_status
  std::shared_ptr<std::atomic<bool>> lost = std::make_shared<std::atomic<bool>>(false);
  std::string summary;
  bool stopped = false;
};

cluster_node::cluster_node(std::unique_ptr<impl> i) : impl_(std::move(i)) {}
cluster_node::~cluster_node() {
  stop();
}
const std::string& cluster_node::summary() const {
  return impl_->summary;
}
bool cluster_node::supervisor_lost() const {
  return impl_->lost->load();
}
result<std::string> cluster_node::reload_api_keys() {
  auto& k = impl_->keys;
  if (!k || k->path().empty()) return std::string("no API key file to reload on this node");
  auto n = k->reload();
  if (!n)
    return error_info{n.error().code, fmt::format("API keys NOT reloaded, the previous {} key(s) "
                                                  "stay: {}",
                                                  k->size(), n.error().message)};
  return fmt::format("API keys reloaded from {}: {} key(s)", k->path(), *n);
}

result<std::unique_ptr<cluster_node>> cluster_node::start(const manifest& m,
                                                          const std::string& name,
                                                          node_options opts) {
  const manifest_node* self_node = m.find_node(name);
  if (!self_node)
    return error_info{errc::invalid_request,
                      fmt::format("{}: no node named '{}' in the manifest", m.path, name)};
  uint32_t idx = static_cast<uint32_t>(self_node - m.nodes.data());
  const manifest_node* sup_node = nullptr;
  for (const auto& n : m.nodes)
    if (n.count(role::supervisor) > 0) sup_node = &n;
  if (!sup_node) return error_info{errc::invalid_request, "the manifest has no supervisor"};

  // Authentication material first: a bad file is an error naming it, before anything runs.
  std::optional<tls_files> tls;
  if (m.security.tls) {
    tls = tls_files{m.security.tls->ca, m.security.tls->cert_for(name),
                    m.security.tls->key_for(name)};
    if (auto ok = check_tls_files(*tls); !ok)
      return error_info{
          errc::invalid_request,
          fmt::format("node '{}': security.tls: {}{}", name, ok.error().message,
                      m.security.tls->generated
                          ? fmt::format(" (tls: auto: tokenmill launch creates the certificates "
                                        "in {}, or run tokenmill certs init {} --nodes ...)",
                                        m.security.certs_dir, m.security.certs_dir)
                          : std::string())};
  }
  std::vector<uint8_t> secret;
  if (!m.security.secret_file.empty()) {
    auto s = read_secret_file(m.security.secret_file);
    if (!s)
      return error_info{errc::invalid_request,
                        fmt::format("node '{}': {}", name, s.error().message)};
    secret = std::move(*s);
  }

  auto im = std::make_unique<impl>();
  register_types(im->caf_cfg);
  im->caf_cfg.load<caf::io::middleman>();
  if (tls) {
    // Outbound links: CAF's OpenSSL module in certificate mode (TLS with mutual
    // authentication, NOTES.md). Inbound links end at the control gate, with the same files.
    im->caf_cfg.load<caf::openssl::manager>();
    im->caf_cfg.openssl_certificate = tls->cert;
    im->caf_cfg.openssl_key = tls->key;
    im->caf_cfg.openssl_cafile = tls->ca;
  }
  detail::configure_scheduler(im->caf_cfg, 2);
  im->caf_cfg.set("logger.console", caf::atom("none"));
  // Heartbeats are off by default in CAF 0.17: without them a hung or cut-off peer is
  // never detected (NOTES.md).
  im->caf_cfg.set("middleman.heartbeat-interval",
                  caf::timespan{std::chrono::milliseconds(m.failure.heartbeat_ms)});
  im->caf_cfg.set("middleman.connection-timeout",
                  caf::timespan{std::chrono::milliseconds(m.failure.connection_timeout_ms)});
  // Nodes connect to each other directly through their control ports (node_agent); CAF's
  // automatic connections would open an unguarded port on every interface.
  im->caf_cfg.set("middleman.enable-automatic-connections", false);
  im->sys = std::make_unique<caf::actor_system>(im->caf_cfg);
  auto& sys = *im->sys;
  auto fail = [&](error_info e) -> result<std::unique_ptr<cluster_node>> {
    shutdown_actors(im->actors);
    return e;
  };

  // On the supervisor's node the supervisor exists before the agent is published, so a
  // joining node can never be handed an unset supervisor.
  caf::actor sup;
  worker_options defaults;
  defaults.engine = m.defaults.engine;
  auto spec0 = to_engine_spec(m, defaults);
  // The model is loaded (mapped) once; every worker's engine shares it.
  if (auto r = load_engine_model(spec0); !r) return fail(r.error());
  auto spec_for = [&](const worker_options& o) {
    auto s = to_engine_spec(m, o);
    if (s.model_path == spec0.model_path) s.model = spec0.model;
    return s;
  };
  auto probe_engine = make_engine(spec0);
  if (!probe_engine) return fail({errc::invalid_request, probe_engine.error().message});
  model_info model = (*probe_engine)->info();
  probe_engine->reset();
  // With TLS, the control gate records which certificate each inbound link presented, and
  // the supervisor (on its node) admits a node only under a name its certificate carries.
  auto certificates = tls ? std::make_shared<node_certificates>() : nullptr;
  if (sup_node == self_node) {
    sup = detail::spawn_node_supervisor(sys, m, idx, model.name, secret, true, certificates);
    im->actors.push_back(sup);
  }
  std::vector<std::pair<std::string, uint16_t>> control;
  for (const auto& n : m.nodes)
    control.emplace_back(n.address, n.port);
  auto agent = sys.spawn(node_agent, sup, idx, std::move(control),
                         static_cast<uint32_t>(sup_node - m.nodes.data()));
  im->actors.push_back(agent);
  // The middleman listens on loopback only; peers reach it through the gate, which passes
  // only well-formed BASP (cluster/control_gate.hpp).
  auto published = sys.middleman().publish(agent, 0, "127.0.0.1", true);
  if (!published)
    return fail({errc::unavailable, fmt::format("node '{}' cannot publish its agent: {}", name,
                                                sys.render(published.error()))});
  control_gate_config gc;
  gc.host = self_node->address;
  gc.port = self_node->port;
  gc.upstream_port = *published;
  gc.tls = tls;
  gc.certificates = certificates;
  im->gate = std::make_unique<control_gate>(gc);
  if (auto gp = im->gate->start(); !gp)
    return fail({errc::invalid_request,
                 fmt::format("node '{}' cannot listen on {}:{}: {}", name, self_node->address,
                             self_node->port, gp.error().message)});

  caf::scoped_actor self{sys};
  if (sup_node !=
      self_node) {  // The supervisor's node may start later: keep trying until the join timeout.
    auto deadline = now_ns() + static_cast<int64_t>(opts.join_timeout_s * 1e9);
    std::string last_error;
    while (!sup && now_ns() < deadline) {
      if (opts.cancelled && opts.cancelled())
        return fail({errc::cancelled, fmt::format("node '{}' stopped while joining", name)});
      auto remote = tls ? caf::openssl::remote_actor(sys, sup_node->address, sup_node->port)
                        : sys.middleman().remote_actor(sup_node->address, sup_node->port);
      if (!remote) {
        last_error = sys.render(remote.error());
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      self->request(*remote, std::chrono::seconds(5), supervisor_atom::value)
          .receive([&](caf::actor s) { sup = std::move(s); },
                   [&](caf::error& e) { last_error = sys.render(e); });
      if (!sup) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (!sup)
      return fail({errc::timeout,
                   fmt::format("node '{}' could not reach the supervisor on node '{}' at {}:{} "
                               "within {} s: {}{}",
                               name, sup_node->name, sup_node->address, sup_node->port,
                               opts.join_timeout_s, last_error,
                               tls ? " (over TLS: the supervisor's node refuses a certificate "
                                     "that is not signed by the cluster's CA, and logs why)"
                                   : "")});
  }
  join_node join{name, idx, manifest_hash(m), model.name, agent, host_clock_id(), {}, {}};
  if (!secret.empty()) {
    // Prove knowledge of the cluster secret: HMAC over the supervisor's fresh challenge and
    // this join's claims (actors/supervisor/join_policy.hpp).
    std::string failed;
    self->request(sup, std::chrono::seconds(10), join_challenge_atom::value)
        .receive([&](const std::string& c) { join.challenge = c; },
                 [&](caf::error& e) { failed = sys.render(e); });
    if (join.challenge.empty())
      return fail(
          {errc::invalid_request, fmt::format("node '{}': no join challenge from the supervisor{}",
                                              name, failed.empty() ? "" : ": " + failed)});
    join.proof = join_proof(
        secret, join.challenge,
        join_statement{m.cluster, name, idx, join.manifest_hash, join.model, join.host_id});
  }
  std::string refused = "no answer from the supervisor";
  self->request(sup, std::chrono::seconds(10), join)
      .receive([&](const std::string& r) { refused = r; },
               [&](caf::error& e) { refused = "join failed: " + sys.render(e); });
  if (!refused.empty())
    return fail({errc::invalid_request,
                 fmt::format("node '{}': the supervisor refused the join: {}", name, refused)});
  im->actors.push_back(sys.spawn(supervisor_watch, sup, im->lost));

  // The actors of this node. One KV transport per node process, shared by its workers:
  // with UCX, every pool is registered with the node's UCP worker and its remote key
  // travels in the worker's pool descriptor.
  std::shared_ptr<kv_transport> transport;
  if (m.defaults.kv_transport == "ucx") {
    ucx_config uc;
    uc.op_timeout = std::chrono::milliseconds(m.ucx.op_timeout_ms);
    uc.stall_timeout = std::chrono::milliseconds(m.ucx.stall_timeout_ms);
    uc.max_inflight_bytes = uint64_t{m.ucx.window_mib} << 20;
    // Endpoints and remote keys only for the pools the supervisor announced (issue 18).
    uc.announced_only = true;
    auto t = ucx_transport::create(uc);
    if (!t) return fail(t.error());
    transport = std::move(*t);
  } else {
    transport = std::make_shared<inline_transport>();
  }
  detail::node_services services;
  services.transport = transport;
  services.engine_for = [&](const manifest_actor& a) -> result<std::unique_ptr<engine>> {
    auto eng = make_engine(spec_for(*a.worker()));
    if (!eng) return error_info{errc::invalid_request, a.name + ": " + eng.error().message};
    return std::move(*eng);
  };
  if (m.defaults.kv_memory) {
    auto pools = node_kv_pools(m, *self_node, model);
    if (!pools) return fail(pools.error());
    services.prefill_blocks = pools->prefill_blocks;
    services.decode_blocks = pools->decode_blocks;
    spdlog::info("node '{}': {}", name, pools->summary);
  }
  services.router = to_router_config(m);
  services.router.block_tokens = model.layout.block_tokens;
  services.router.eos = model.eos;
  // Constrained decoding needs the vocabulary's bytes on every node with workers.
  if (auto vt = make_tokenizer(spec0); vt)
    services.grammars = detail::make_grammar_cache(**vt, model.vocab_size, model.eos);
  else
    spdlog::warn("node '{}': no tokenizer ({}): its workers refuse constrained requests", name,
                 vt.error().message);
  services.router.cost.kv_bytes_per_block = model.layout.block_bytes();
  // Longer than any write of a prefill worker can live (ucx.op_timeout_ms).
  services.kv_drain_timeout = std::chrono::milliseconds(m.ucx.op_timeout_ms + 1000);
  auto spawned = detail::spawn_node_actors(sys, m, idx, sup, services, im->actors);
  if (!spawned) return fail(spawned.error());
  im->workers = spawned->workers;
  caf::actor router = spawned->router;
  const auto& names = spawned->names;
  std::string endpoints = fmt::format("control={}:{}", self_node->address, self_node->port);
  if (m.frontend.node == name) {
    if (!router) return fail({errc::invalid_request, "the frontend's node runs no router"});
    auto made_tok = make_tokenizer(spec0);
    if (!made_tok) return fail({errc::invalid_request, made_tok.error().message});
    auto tok = *made_tok;
    detail::frontend_plan fp;
    fp.node_name = name;
    fp.rpc.host = m.frontend.host;
    fp.rpc.port = m.frontend.rpc_port;
    fp.rpc.node = idx;
    http_server_config hc;
    hc.host = m.frontend.host;
    hc.port = m.frontend.http_port;
    hc.node = idx;
    // API keys: the manifest's file, else the node's $TOKENMILL_API_KEY.
    if (!m.frontend.api_key_file.empty()) {
      auto k = api_keys::from_file(m.frontend.api_key_file);
      if (!k) return fail({k.error().code, "frontend.api_key_file: " + k.error().message});
      im->keys = *k;
    } else if (const char* key = std::getenv("TOKENMILL_API_KEY"); key && *key) {
      auto k = api_keys::from_key(key, "$TOKENMILL_API_KEY");
      if (!k) return fail(k.error());
      im->keys = *k;
    }
    if (m.frontend.protect_metrics && !im->keys)
      return fail({errc::invalid_request,
                   "frontend.protect_metrics needs API keys (frontend.api_key_file or "
                   "$TOKENMILL_API_KEY)"});
    fp.rpc.keys = hc.keys = im->keys;
    // One count of failed key attempts per client address, whichever port they came to.
    if (im->keys) fp.rpc.throttle = hc.throttle = std::make_shared<auth_throttle>();
    hc.protect_metrics = m.frontend.protect_metrics;
    fp.rpc.tls_cert = hc.tls_cert = m.frontend.tls_cert;
    fp.rpc.tls_key = hc.tls_key = m.frontend.tls_key;
    fp.http = hc;
    fp.model_chat_template = spec0.model ? spec0.model->chat_template : "";
    auto fe = detail::start_frontend(sys, router, sup, tok, model, std::move(fp), transport);
    if (!fe) return fail(fe.error());
    im->rpc = std::move(fe->rpc);
    im->http = std::move(fe->http);
    endpoints += fmt::format(" rpc={}:{} http={}:{}", m.frontend.host, fe->rpc_port,
                             m.frontend.host, fe->http_port);
  } else if (self_node->http_port != 0) {
    // Every other node serves its own workers' metrics.
    auto reg = std::make_shared<metrics::registry>();
    auto* sysp = &sys;
    auto workers = im->workers;
    im->metrics = std::make_unique<metrics_server>(
        self_node->address, self_node->http_port, [reg, sysp, workers, transport, name]() {
          std::vector<worker_status> st;
          caf::scoped_actor self{*sysp};
          for (const auto& w : workers)
            self->request(w, std::chrono::seconds(1), status_atom::value)
                .receive([&](worker_status& ws) { st.push_back(std::move(ws)); },
                         [](caf::error&) {});
          export_worker_metrics(*reg, st);
          export_transport_metrics(*reg, name, transport->name(), transport->stats());
          return reg->expose();
        });
    auto mport = im->metrics->start();
    if (!mport) return fail(mport.error());
    endpoints += fmt::format(" http={}:{}", self_node->address, *mport);
  }
  im->summary =
      fmt::format("node {} ({}) actors=[{}] {}", name, m.cluster, fmt::join(names, ","), endpoints);
  return std::unique_ptr<cluster_node>(new cluster_node(std::move(im)));
}

void cluster_node::stop() {
  auto& im = *impl_;
  if (im.stopped) return;
  im.stopped = true;
  if (im.metrics) im.metrics->stop();
  if (im.http) im.http->stop();
  if (im.rpc) im.rpc->stop();
  shutdown_actors(im.actors);
  if (im.gate) im.gate->stop();
}

}  // namespace tokenmill
