#include "cluster/embedded_cluster.hpp"

#include <unistd.h>

#include <thread>
#include <vector>

#include <fmt/format.h>
#include <caf/all.hpp>

#include "actors/type_ids.hpp"
#include "common/clock.hpp"

namespace tokenmill {

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
  if (cfg.engine.kind == "cpu" && cfg.engine.cpu.threads == 0) {
    // The workers compute concurrently: split the cores between them.
    auto workers = cfg.prefill_workers + cfg.decode_workers;
    cfg.engine.cpu.threads = std::max(1u, std::thread::hardware_concurrency() / workers);
  }
  auto made_tok = make_tokenizer(cfg.engine);
  if (!made_tok) return error_info{errc::invalid_request, made_tok.error().message};
  auto tok = *made_tok;
  // One engine per worker; the first also tells us the model.
  std::vector<std::unique_ptr<engine>> engines;
  for (uint32_t i = 0; i < cfg.prefill_workers + cfg.decode_workers; ++i) {
    auto e = make_engine(cfg.engine);
    if (!e) return error_info{errc::invalid_request, e.error().message};
    engines.push_back(std::move(*e));
  }
  model_info model = engines.front()->info();
  // KV pools are allocated up front; refuse sizes this machine cannot hold instead of
  // failing inside an actor.
  {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    double phys =
        pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0;
    double block = static_cast<double>(model.layout.block_bytes());
    double need = block * (double(cfg.prefill.num_blocks) * cfg.prefill_workers +
                           double(cfg.decode.num_blocks) * cfg.decode_workers);
    if (phys > 0 && need > 0.8 * phys)
      return error_info{
          errc::invalid_request,
          fmt::format("KV pools need {:.1f} GiB ({} B per block; {} prefill x {} "
                      "blocks, {} decode x {} blocks) but this machine has {:.1f} GiB "
                      "of memory: lower --decode-kv-blocks/--prefill-kv-blocks or the "
                      "KV layout",
                      need / (1 << 30), model.layout.block_bytes(), cfg.prefill_workers,
                      cfg.prefill.num_blocks, cfg.decode_workers, cfg.decode.num_blocks,
                      phys / (1 << 30))};
  }
  cfg.router.block_tokens = model.layout.block_tokens;
  cfg.router.eos = model.eos;

  auto im = std::make_unique<impl>();
  register_types(im->caf_cfg);
  im->caf_cfg.set("scheduler.max-threads", static_cast<size_t>(cfg.scheduler_threads));
  im->caf_cfg.set("logger.console", caf::atom("none"));
  im->sys = std::make_unique<caf::actor_system>(im->caf_cfg);
  auto& sys = *im->sys;

  auto transport = std::make_shared<inline_transport>();
  worker_id next_id = 0;
  auto info = [&](role r, std::string name) {
    worker_info w;
    w.id = next_id++;
    w.kind = r;
    w.name = std::move(name);
    w.node = "local";
    return w;
  };
  supervisor_config sc;
  sc.cluster = cfg.cluster_name;
  sc.model = model.name;
  sc.expected_workers = 2 + cfg.prefill_workers + cfg.decode_workers;
  auto sup = spawn_supervisor(sys, sc);
  im->actors.push_back(sup);
  auto kv = spawn_kv_store(sys, info(role::kv_store, "kv_store"), sup);
  im->actors.push_back(kv);
  auto router = spawn_router(sys, info(role::router, "router"), cfg.router, sup);
  im->actors.push_back(router);
  size_t e = 0;
  for (uint32_t i = 0; i < cfg.prefill_workers; ++i)
    im->actors.push_back(spawn_prefill(sys, info(role::prefill, fmt::format("prefill{}", i)),
                                       cfg.prefill, std::move(engines[e++]), transport, sup));
  for (uint32_t i = 0; i < cfg.decode_workers; ++i)
    im->actors.push_back(spawn_decode(sys, info(role::decode, fmt::format("decode{}", i)),
                                      cfg.decode, std::move(engines[e++]), transport, sup, kv));

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

  auto fm = std::make_shared<frontend_metrics>(std::make_shared<metrics::registry>(), "local");
  im->rpc = std::make_unique<rpc_server>(sys, router, sup, tok, model, cfg.rpc, fm);
  auto port = im->rpc->start();
  if (!port) {
    shutdown_actors(im->actors);
    return port.error();
  }
  uint16_t http_port = 0;
  if (cfg.http_enabled) {
    auto fmt_ = choose_chat_format(cfg.chat_template,
                                   cfg.engine.model ? cfg.engine.model->chat_template : "");
    auto hp = fmt_ ? result<uint16_t>(uint16_t{0}) : result<uint16_t>(fmt_.error());
    if (fmt_) {
      cfg.http.chat_format = *fmt_;
      auto hc = cfg.http;
      hc.collect_node_metrics = [transport](metrics::registry& r) {
        export_transport_metrics(r, "local", transport->name(), transport->stats());
      };
      im->http = std::make_unique<http_server>(sys, router, sup, tok, model, hc, fm);
      hp = im->http->start();
    }
    if (!hp) {
      im->rpc->stop();
      shutdown_actors(im->actors);
      return hp.error();
    }
    http_port = *hp;
  }
  std::unique_ptr<embedded_cluster> c(new embedded_cluster(std::move(im)));
  c->port_ = *port;
  c->http_port_ = http_port;
  c->model_ = model;
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
