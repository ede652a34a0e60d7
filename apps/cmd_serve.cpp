// `tokenmill serve`: a whole cluster in one process.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apps/commands.hpp"
#include "apps/engine_options.hpp"
#include "cluster/embedded_cluster.hpp"

namespace tokenmill::app {

struct serve_opts {
  engine_options engine;
  bool no_http = false;
  double request_timeout_s = 600;  ///< router_config::request_timeout
  double stall_timeout_s = 120;    ///< router_config::stall_timeout
};

command add_serve(CLI::App& app) {
  auto cfg = std::make_shared<embedded_config>();
  auto o = std::make_shared<serve_opts>();
  add_engine_options(app, cfg->engine, o->engine,
                     "Compute threads per worker (0 = this machine's cores / workers)");
  app.add_option("--host", cfg->rpc.host, "Address the RPC frontend binds")->capture_default_str();
  app.add_option("--rpc-port", cfg->rpc.port,
                 "RPC port (0 = any free port; the ready line says which)")
      ->capture_default_str();
  auto* h = app.add_option_group("http", "The OpenAI-compatible HTTP API");
  h->add_option("--http-port", cfg->http.port,
                "HTTP port (0 = any free port; the ready line says which)")
      ->capture_default_str();
  h->add_flag("--no-http", o->no_http, "Serve only the Cap'n Proto RPC API");
  h->add_option("--api-key", cfg->http.api_key,
                "Require 'Authorization: Bearer KEY' on /v1/* (default: $TOKENMILL_API_KEY)");
  h->add_option("--chat-template", cfg->chat_template,
                "Chat prompt format: auto (from the model's template, else chatml), chatml, "
                "llama3 or mistral")
      ->check(CLI::IsMember({"auto", "chatml", "llama3", "mistral"}))
      ->capture_default_str();
  h->add_option("--max-body-bytes", cfg->http.max_body_bytes,
                "Larger HTTP request bodies are refused with 413")
      ->check(CLI::Range(uint64_t{1024}, uint64_t{1} << 30))
      ->capture_default_str();
  // Slow and hostile clients: every wait on a client is bounded (seconds).
  auto secs = CLI::Range(0.1, 86400.0);
  h->add_option("--http-idle-timeout", cfg->http.idle_timeout_s,
                "Seconds a keep-alive connection may wait for its next request")
      ->check(secs)
      ->capture_default_str();
  h->add_option("--http-header-timeout", cfg->http.header_timeout_s,
                "Seconds from a request's first byte to the end of its headers (slowloris)")
      ->check(secs)
      ->capture_default_str();
  h->add_option("--http-body-timeout", cfg->http.body_timeout_s,
                "Seconds to receive a request body once its headers are in")
      ->check(secs)
      ->capture_default_str();
  h->add_option("--http-write-timeout", cfg->http.write_timeout_s,
                "Seconds a client may take nothing of a response or stream before it is dropped "
                "(its request cancelled)")
      ->check(secs)
      ->capture_default_str();
  h->add_option("--http-max-connections", cfg->http.max_connections,
                "Open HTTP connections; more are closed as soon as accepted")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  h->add_option("--http-send-buffer", cfg->http.send_buffer_bytes,
                "SO_SNDBUF of HTTP client sockets, bytes (0 = the kernel's autotuning)")
      ->check(CLI::Range(0, 1 << 26))
      ->capture_default_str();
  app.add_option("--cluster-name", cfg->cluster_name)->capture_default_str();
  app.add_option("--prefill-workers", cfg->prefill_workers,
                 "Prefill workers (0 = prefill on the decode workers)")
      ->capture_default_str();
  app.add_option("--decode-workers", cfg->decode_workers)
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  auto* k = o->engine.kv_group;
  k->add_option("--decode-kv-blocks", cfg->decode.num_blocks, "Blocks per decode worker")
      ->check(CLI::Range(1u, 1u << 24))
      ->capture_default_str();
  k->add_option("--prefill-kv-blocks", cfg->prefill.num_blocks, "Blocks per prefill worker")
      ->check(CLI::Range(1u, 1u << 24))
      ->capture_default_str();
  // Scheduling.
  auto* s = app.add_option_group("scheduling", "Batching, admission and disaggregation");
  s->add_option("--max-batch", cfg->decode.max_batch, "Sequences per decode step")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  s->add_option("--prefill-chunk", cfg->prefill.token_budget,
                "Prompt tokens per prefill engine call")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  s->add_option(
       "--local-prefill-threshold", cfg->router.local_prefill_threshold,
       "Prefill on the decode worker when the uncached prompt is shorter than this (0 = never)")
      ->capture_default_str();
  s->add_option("--max-inflight", cfg->router.limits.max_inflight,
                "Requests in flight before new ones are rejected as overloaded")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  s->add_option("--migration-limit", cfg->router.migration_limit,
                "Moves per request when its worker fails or stalls (0 = fail the request)")
      ->check(CLI::Range(0u, 100u))
      ->capture_default_str();
  s->add_option("--request-timeout", o->request_timeout_s,
                "Seconds a request may take in all before it fails as timeout (0 = no bound)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  s->add_option("--stall-timeout", o->stall_timeout_s,
                "Seconds without a token from a worker before the request moves (0 = off)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  s->add_option("--stream-window", cfg->rpc.stream_window_bytes,
                "Token stream window per client connection (bytes)")
      ->check(CLI::Range(4096, 1 << 24))
      ->capture_default_str();
  s->add_option("--rpc-stream-timeout", cfg->rpc.stream_timeout_s,
                "Seconds an RPC client may take none of its token stream before its request is "
                "cancelled (0 = no bound)")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();

  return [cfg, o]() -> int {
    if (auto r = resolve_engine_spec(cfg->engine, o->engine); !r) {
      std::fprintf(stderr, "tokenmill serve: %s\n", r.error().message.c_str());
      return 2;
    }
    auto span = [](double s) {
      return std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>(s));
    };
    cfg->router.request_timeout = span(o->request_timeout_s);
    cfg->router.stall_timeout = span(o->stall_timeout_s);
    cfg->decode.local_prefill_budget = cfg->prefill.token_budget;
    cfg->http.host = cfg->rpc.host;
    cfg->http_enabled = !o->no_http;
    if (cfg->http.api_key.empty())
      if (const char* key = std::getenv("TOKENMILL_API_KEY")) cfg->http.api_key = key;
    // Block the stop signals in every thread (they inherit the mask) and wait for them
    // here, so shutdown runs on this thread in order.
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);
    auto cluster = embedded_cluster::start(*cfg);
    if (!cluster) {
      std::fprintf(stderr, "tokenmill serve: %s\n", cluster.error().message.c_str());
      return 1;
    }
    std::string http = o->no_http ? std::string("off")
                                  : fmt::format("{}:{}", cfg->http.host, (*cluster)->http_port());
    std::printf(
        "tokenmill ready: rpc=%s:%u http=%s engine=%s model=%s prefill_workers=%u "
        "decode_workers=%u\n",
        cfg->rpc.host.c_str(), (*cluster)->rpc_port(), http.c_str(), cfg->engine.kind.c_str(),
        (*cluster)->model().name.c_str(), cfg->prefill_workers, cfg->decode_workers);
    std::fflush(stdout);
    int sig = 0;
    sigwait(&stop_set, &sig);
    std::printf("tokenmill: %s received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    std::fflush(stdout);
    (*cluster)->stop();
    cluster->reset();
    return 0;
  };
}

}  // namespace tokenmill::app
