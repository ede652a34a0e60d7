#include "cluster/embedded_cluster.hpp"

#include <algorithm>
#include <filesystem>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <caf/all.hpp>

#include "actors/type_ids.hpp"
#include "cluster/detail/node_wiring.hpp"
#include "common/clock.hpp"
#include "engine/cpu/thread_pool.hpp"

namespace tokenmill {
namespace {

/// The single-process cluster as a manifest of one node, "local", running the supervisor,
/// the kv-store, the router and the workers (named as `tokenmill serve` always named them:
/// router, prefill0, decode0, ...). Only the node's actors and their options are read;
/// the engines, transport and frontend come from `cfg`.
manifest one_node_manifest(const embedded_config& cfg, const serve_topology& topo) {
  manifest m;
  m.cluster = cfg.cluster_name;
  m.defaults.engine = cfg.engine.kind;
  m.defaults.weights_hugepages = std::string(to_string(cfg.engine.hugepages));
  m.defaults.kv_transport = "inline";
  manifest_node n;
  n.name = "local";
  n.address = "127.0.0.1";
  n.local = true;
  auto add = [&](role r, std::string name, auto options) {
    manifest_actor a;
    a.kind = r;
    a.name = std::move(name);
    a.options = std::move(options);
    n.actors.push_back(std::move(a));
  };
  add(role::supervisor, "supervisor", std::monostate{});
  add(role::kv_store, "kv_store", std::monostate{});
  add(role::router, "router", std::monostate{});
  // `count` workers of role `r` with options `o`, named <role><i>.
  auto workers = [&](role r, uint32_t count, auto o) {
    o.engine = cfg.engine.kind;
    for (uint32_t i = 0; i < count; ++i)
      add(r, fmt::format("{}{}", to_string(r), i), o);
  };
  prefill_options p;
  p.kv_blocks = cfg.prefill.num_blocks;
  p.chunk = cfg.prefill.token_budget;
  p.max_seqs = cfg.prefill.max_seqs;
  p.kv_host_blocks = cfg.prefill.tier.host_blocks;
  p.kv_disk_blocks = cfg.prefill.tier.disk_blocks;
  p.kv_disk_dir = cfg.prefill.tier.disk_dir;
  p.recompute_ratio = cfg.prefill.recompute_ratio;
  p.blend_policy = blend_policy_name(cfg.prefill.blend);
  workers(role::prefill, topo.prefill_workers, p);
  decode_options d;
  d.kv_blocks = cfg.decode.num_blocks;
  d.max_batch = cfg.decode.max_batch;
  d.local_prefill_budget = cfg.decode.local_prefill_budget;
  d.kv_host_blocks = cfg.decode.tier.host_blocks;
  d.kv_disk_blocks = cfg.decode.tier.disk_blocks;
  d.kv_disk_dir = cfg.decode.tier.disk_dir;
  d.recompute_ratio = cfg.decode.recompute_ratio;
  d.blend_policy = blend_policy_name(cfg.decode.blend);
  d.first_token = first_token_release_name(cfg.decode.first_token);
  workers(role::decode, topo.decode_workers, d);
  m.frontend.node = n.name;
  m.nodes.push_back(std::move(n));
  return m;
}

/// Bytes of the model's weights on disk: the file, or a Hugging Face directory's files;
/// 0 when unknown.
uint64_t model_file_bytes(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (path.empty()) return 0;
  if (fs::is_regular_file(path, ec)) return fs::file_size(path, ec);
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.is_regular_file(ec)) total += e.file_size(ec);
  return total;
}

}  // namespace

struct embedded_cluster::impl {
  caf::actor_system_config caf_cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<caf::actor> actors;  ///< everything we spawned, for shutdown
  std::unique_ptr<rpc_server> rpc;
  std::unique_ptr<http_server> http;
  bool stopped = false;
};

embedded_cluster::embedded_cluster(std::unique_ptr<impl> i) : impl_(std::move(i)) {}

embedded_cluster::~embedded_cluster() {
  stop();
}

caf::actor_system& embedded_cluster::system() {
  return *impl_->sys;
}

result<std::unique_ptr<embedded_cluster>> embedded_cluster::start(embedded_config cfg) {
  if (cfg.decode_workers == 0)
    return error_info{errc::invalid_request, "a cluster needs at least one decode worker"};
  // The model is loaded (mapped) once and shared by every worker's engine.
  if (auto r = load_engine_model(cfg.engine); !r) return r.error();
  // Workers and threads: what the user gave, the rest from the core count.
  const bool host_compute = cfg.engine.kind == "cpu";
  std::optional<uint32_t> threads;
  if (cfg.engine.cpu.threads > 0) threads = cfg.engine.cpu.threads;
  serve_topology topo =
      choose_topology(std::thread::hardware_concurrency(), host_compute, cfg.prefill_workers,
                      cfg.decode_workers, threads, cfg.prefill_chunk_given, cfg.shared_pool);
  cfg.prefill_workers = topo.prefill_workers;
  if (topo.local_prefill_chunk > 0) cfg.decode.local_prefill_budget = topo.local_prefill_chunk;
  if (host_compute) cfg.engine.cpu.threads = topo.threads;
  if (topo.shared_pool)
    // A caller slot per worker (beyond 64, workers wait for a free one).
    cfg.engine.cpu.pool = std::make_shared<cpu::thread_pool>(
        topo.threads, std::min(64u, topo.prefill_workers + topo.decode_workers));
  auto made_tok = make_tokenizer(cfg.engine);
  if (!made_tok) return error_info{errc::invalid_request, made_tok.error().message};
  auto tok = *made_tok;
  // One engine per worker; the first also tells us the model.
  std::vector<std::unique_ptr<engine>> engines;
  for (uint32_t i = 0; i < topo.prefill_workers + topo.decode_workers; ++i) {
    auto e = make_engine(cfg.engine);
    if (!e) return error_info{errc::invalid_request, e.error().message};
    engines.push_back(std::move(*e));
  }
  model_info model = engines.front()->info();
  // KV pools from the memory budget. Their pages are touched as blocks are first used, so
  // the budget bounds the resident KV; pools this machine cannot hold are refused here
  // instead of failing inside an actor.
  kv_demand demand;
  demand.block_bytes = model.layout.block_bytes();
  demand.block_tokens = model.layout.block_tokens;
  demand.max_context = model.max_context;
  demand.prefill_workers = topo.prefill_workers;
  demand.decode_workers = topo.decode_workers;
  demand.prefill_max_seqs = cfg.prefill.max_seqs;
  demand.decode_max_batch = cfg.decode.max_batch;
  demand.prefill_blocks = cfg.prefill_kv_blocks;
  demand.decode_blocks = cfg.decode_kv_blocks;
  auto pools = plan_kv_pools(demand, cfg.kv_memory, physical_memory_bytes(),
                             model_file_bytes(cfg.engine.model_path));
  if (!pools) return pools.error();
  cfg.prefill.num_blocks = std::max(1u, pools->prefill_blocks);
  cfg.decode.num_blocks = pools->decode_blocks;
  cfg.router.block_tokens = model.layout.block_tokens;
  cfg.router.eos = model.eos;
  cfg.router.cost.kv_bytes_per_block = model.layout.block_bytes();
  // The decode worker resolves each request's recompute ratio: the cost model discounts
  // chunk hits by the same one.
  cfg.router.recompute_ratio = cfg.decode.recompute_ratio;

  auto im = std::make_unique<impl>();
  register_types(im->caf_cfg);
  detail::configure_scheduler(im->caf_cfg, cfg.scheduler_threads);
  im->caf_cfg.set("logger.console", caf::atom("none"));
  im->sys = std::make_unique<caf::actor_system>(im->caf_cfg);
  auto& sys = *im->sys;

  // The one wiring path of a node (cluster/detail/node_wiring.hpp), with what differs
  // here as its inputs: the inline transport, the engines made above, the CLI's router.
  auto m = one_node_manifest(cfg, topo);
  auto sup = detail::spawn_node_supervisor(sys, m, 0, model.name);
  im->actors.push_back(sup);
  auto transport = std::make_shared<inline_transport>();
  detail::node_services services;
  services.transport = transport;
  size_t e = 0;
  services.engine_for = [&](const manifest_actor&) -> result<std::unique_ptr<engine>> {
    return std::move(engines.at(e++));
  };
  services.router = cfg.router;
  services.kv_drain_timeout = cfg.decode.kv_drain_timeout;
  services.grammars = detail::make_grammar_cache(*tok, model.vocab_size, model.eos);
  auto spawned = detail::spawn_node_actors(sys, m, 0, sup, services, im->actors);
  if (!spawned) {
    shutdown_actors(im->actors);
    return spawned.error();
  }
  auto router = spawned->router;

  // Ready = the supervisor has a router and a decode worker, and every worker we spawned
  // registered.
  {
    caf::scoped_actor self{sys};
    auto deadline = now_ns() + static_cast<int64_t>(cfg.ready_timeout_s * 1e9);
    auto expected = im->actors.size() - 1;  // all but the supervisor itself
    bool ready = false;
    while (!ready && now_ns() < deadline) {
      self->request(sup, std::chrono::seconds(1), status_atom::value)
          .receive(
              [&](const cluster_status& st) { ready = st.ready && st.workers.size() == expected; },
              [&](caf::error&) {});
      if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!ready) {
      shutdown_actors(im->actors);
      return error_info{errc::timeout, fmt::format("cluster did not become ready within {} s",
                                                   cfg.ready_timeout_s)};
    }
  }

  detail::frontend_plan fp;
  fp.node_name = "local";
  fp.rpc = cfg.rpc;
  if (cfg.http_enabled) fp.http = cfg.http;
  fp.chat_template = cfg.chat_template;
  fp.model_chat_template = cfg.engine.model ? cfg.engine.model->chat_template : "";
  auto fe = detail::start_frontend(sys, router, sup, tok, model, std::move(fp), transport);
  if (!fe) {
    shutdown_actors(im->actors);
    return fe.error();
  }
  im->rpc = std::move(fe->rpc);
  im->http = std::move(fe->http);
  std::unique_ptr<embedded_cluster> c(new embedded_cluster(std::move(im)));
  c->port_ = fe->rpc_port;
  c->http_port_ = fe->http_port;
  c->model_ = model;
  c->topology_ = topo;
  c->kv_pools_ = *pools;
  return c;
}

void embedded_cluster::stop() {
  auto& im = *impl_;
  if (im.stopped) return;
  im.stopped = true;
  if (im.http) im.http->stop();
  if (im.rpc) im.rpc->stop();
  shutdown_actors(im.actors);
}

}  // namespace tokenmill
