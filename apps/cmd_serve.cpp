// `tokenmill serve`: a whole cluster in one process.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apps/commands.hpp"
#include "apps/engine_options.hpp"
#include "apps/signals.hpp"
#include "cluster/embedded_cluster.hpp"
#include "cluster/serving_defaults.hpp"
#include "common/clock.hpp"
#include "common/heap_release.hpp"
#include "frontend/api_keys.hpp"
#include "frontend/auth_throttle.hpp"

namespace tokenmill::app {

struct serve_opts {
  engine_options engine;
  bool no_http = false;
  double request_timeout_s = 600;          ///< router_config::request_timeout
  double stall_timeout_s = 120;            ///< router_config::stall_timeout
  uint32_t max_queue_ms = 2000;            ///< router_config::admission.max_queue_ns
  std::string blend_policy = "deviation";  ///< prefill_config::blend
  std::string first_token = "prefill";     ///< decode_config::first_token
  uint32_t admission_window_ms = 5000;     ///< router_config::admission.window_ns
  uint32_t ttft_slo_ms = 0;                ///< router_config::admission.ttft_slo_ns
  uint32_t prefill_workers = 0;
  std::string compute_pool = "auto";  ///< embedded_config::shared_pool: auto, shared, own
  std::string kv_memory;
  uint32_t prefill_kv_blocks = 0, decode_kv_blocks = 0;
  kv_tier_config tier;  ///< every worker's second KV tier
  CLI::Option *prefill_workers_opt = nullptr, *prefill_blocks_opt = nullptr,
              *decode_blocks_opt = nullptr, *kv_memory_opt = nullptr, *prefill_chunk_opt = nullptr;
  std::string api_key;
  std::string api_key_file;
  std::string tls_cert;
  std::string tls_key;
  uint32_t responses_ttl_s = 3600;  ///< http_server_config::responses.ttl
};

/// The keys `serve` requires: --api-key, --api-key-file or $TOKENMILL_API_KEY; null for
/// none.
result<std::shared_ptr<api_keys>> serve_keys(const serve_opts& o) {
  if (!o.api_key_file.empty()) return api_keys::from_file(o.api_key_file);
  if (!o.api_key.empty()) return api_keys::from_key(o.api_key, "--api-key");
  if (const char* env = std::getenv("TOKENMILL_API_KEY"); env && *env)
    return api_keys::from_key(env, "$TOKENMILL_API_KEY");
  return std::shared_ptr<api_keys>();
}

/// SIGHUP: reads the key file again; an error keeps the old keys and says why.
void reload_keys(api_keys* keys) {
  if (!keys || keys->path().empty()) {
    spdlog::warn("SIGHUP: no API key file to reload (serve --api-key-file FILE)");
    return;
  }
  auto r = keys->reload();
  if (r) {
    std::printf("tokenmill: SIGHUP: API keys reloaded from %s: %zu key(s)\n", keys->path().c_str(),
                *r);
    std::fflush(stdout);
  } else {
    spdlog::warn("SIGHUP: API keys NOT reloaded, the previous {} key(s) stay: {}", keys->size(),
                 r.error().message);
  }
}

command add_serve(CLI::App& app) {
  auto cfg = std::make_shared<embedded_config>();
  auto o = std::make_shared<serve_opts>();
  add_engine_options(app, cfg->engine, o->engine,
                     "Compute threads per worker, or of the shared pool with --compute-pool "
                     "shared (0 = this machine's cores, split between the workers or shared)");
  app.add_option("--host", cfg->rpc.host, "Address the RPC frontend binds")->capture_default_str();
  app.add_option("--rpc-port", cfg->rpc.port,
                 "RPC port (0 = any free port; the ready line says which)")
      ->capture_default_str();
  auto* h = app.add_option_group("http", "The OpenAI-compatible HTTP API");
  h->add_option("--http-port", cfg->http.port,
                "HTTP port (0 = any free port; the ready line says which)")
      ->capture_default_str();
  h->add_flag("--no-http", o->no_http, "Serve only the Cap'n Proto RPC API");
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
  // The Responses API's stored responses (previous_response_id, GET/DELETE /v1/responses/ID).
  h->add_option("--responses-max", cfg->http.responses.max_entries,
                "Stored /v1/responses kept at most (least recently used go first; 0 keeps none)")
      ->check(CLI::Range(size_t{0}, size_t{1} << 24))
      ->capture_default_str();
  h->add_option("--responses-max-bytes", cfg->http.responses.max_bytes,
                "Bytes of stored /v1/responses (conversations and bodies) kept at most")
      ->check(CLI::Range(size_t{0}, size_t{1} << 40))
      ->capture_default_str();
  h->add_option("--responses-ttl", o->responses_ttl_s,
                "Seconds a stored /v1/responses response is kept after it was made")
      ->check(CLI::Range(1u, 30u * 86400u))
      ->capture_default_str();
  h->add_option("--http-send-buffer", cfg->http.send_buffer_bytes,
                "SO_SNDBUF of HTTP client sockets, bytes (0 = the kernel's autotuning)")
      ->check(CLI::Range(0, 1 << 26))
      ->capture_default_str();
  auto* sec = app.add_option_group("security", "API keys and TLS on the client-facing ports");
  auto* key = sec->add_option("--api-key", o->api_key,
                              "Require this key on RPC (login) and HTTP ('Authorization: Bearer "
                              "KEY' on /v1/*, /tokenize) (default: $TOKENMILL_API_KEY)");
  sec->add_option("--api-key-file", o->api_key_file,
                  "Require one of the keys in FILE (one per line, '#' comments); SIGHUP reloads "
                  "it")
      ->excludes(key);
  sec->add_flag("--protect-metrics", cfg->http.protect_metrics,
                "With keys: /metrics and /debug/* need a key too");
  sec->add_option("--tls-cert", o->tls_cert,
                  "PEM certificate chain: the RPC and HTTP ports speak TLS (with --tls-key)");
  sec->add_option("--tls-key", o->tls_key, "PEM private key of --tls-cert");
  app.add_option("--cluster-name", cfg->cluster_name)->capture_default_str();
  o->prefill_workers_opt =
      app.add_option("--prefill-workers", o->prefill_workers,
                     "Prefill workers (0 = prefill on the decode workers, in 128-token chunks "
                     "unless --prefill-chunk is given; default 1)");
  app.add_option("--compute-pool", o->compute_pool,
                 "cpu engine: shared = the workers share one pool of compute threads (all "
                 "cores, or --threads), idle threads joining whichever worker has work, decode "
                 "steps first; own = each worker its own threads; auto = shared for the cpu "
                 "engine (1.3-2.1x output tok/s at concurrency 1 and 1.03-1.16x at 4 on an idle "
                 "2-core VM)")
      ->check(CLI::IsMember({"auto", "shared", "own"}))
      ->capture_default_str();
  app.add_option("--decode-workers", cfg->decode_workers)
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  auto* k = o->engine.kv_group;
  o->kv_memory_opt = k->add_option(
      "--kv-memory", o->kv_memory,
      "KV cache memory of all workers together, e.g. 512M or 2GiB (default: what the workers "
      "can use at once, at most a quarter of the memory the weights leave); pages are touched "
      "as blocks are first used");
  o->decode_blocks_opt =
      k->add_option("--decode-kv-blocks", o->decode_kv_blocks,
                    "Blocks per decode worker (instead of a share of --kv-memory)")
          ->check(CLI::Range(1u, 1u << 24));
  o->prefill_blocks_opt =
      k->add_option("--prefill-kv-blocks", o->prefill_kv_blocks,
                    "Blocks per prefill worker (instead of a share of --kv-memory)")
          ->check(CLI::Range(1u, 1u << 24));
  o->kv_memory_opt->excludes(o->decode_blocks_opt)->excludes(o->prefill_blocks_opt);
  k->add_option("--kv-host-blocks", o->tier.host_blocks,
                "Second KV tier: blocks each worker keeps in host memory after its pool evicts "
                "them, copied back on a prefix hit instead of recomputed (0 = off)")
      ->check(CLI::Range(0u, 1u << 24))
      ->capture_default_str();
  k->add_option("--kv-disk-blocks", o->tier.disk_blocks,
                "Blocks each worker keeps in a disk file after its host tier evicts them "
                "(needs --kv-host-blocks)")
      ->check(CLI::Range(0u, 1u << 26))
      ->capture_default_str();
  k->add_option("--kv-disk-dir", o->tier.disk_dir,
                "Directory of the disk tier's files (default $TMPDIR or /tmp)");
  // Scheduling.
  auto* s = app.add_option_group("scheduling", "Batching, admission and disaggregation");
  s->add_option("--max-batch", cfg->decode.max_batch, "Sequences per decode step")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  o->prefill_chunk_opt = s->add_option("--prefill-chunk", cfg->prefill.token_budget,
                                       "Prompt tokens per prefill engine call (default 512; 128 "
                                       "with --prefill-workers 0)")
                             ->check(CLI::Range(1u, 1u << 20));
  s->add_option("--recompute-ratio", cfg->prefill.recompute_ratio,
                "Chunk reuse: share of a segmented prompt's reused tokens recomputed when the "
                "request names none (tokenmill.recompute_ratio); 1 = exact")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  s->add_option("--blend-policy", o->blend_policy,
                "Chunk reuse: how the recomputed tokens are chosen: deviation (CacheBlend: "
                "the highest K/V deviation, measured on every token up to its layer) or "
                "leading (EPIC: each chunk's first tokens, so only those are computed)")
      ->check(CLI::IsMember({"deviation", "leading"}))
      ->capture_default_str();
  s->add_option("--first-token", o->first_token,
                "Who streams a prefill worker's first token: prefill (as soon as the KV is "
                "pushed: lowest TTFT) or decode (the decode worker, just before the sequence's "
                "first decode step: about half a step more TTFT, every gap one step)")
      ->check(CLI::IsMember({"prefill", "decode"}))
      ->capture_default_str();
  s->add_option(
       "--local-prefill-threshold", cfg->router.local_prefill_threshold,
       "Prefill on the decode worker when the uncached prompt is shorter than this (0 = never)")
      ->capture_default_str();
  s->add_option("--router-prefill-weight", cfg->router.cost.weights.prefill,
                "Cost model: weight of the time to compute a prompt's uncached tokens (0: a "
                "cached prefix only breaks ties between equally loaded workers)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  s->add_flag("!--no-router-fetch", cfg->router.fetch.enabled,
              "Never fetch a prefix another worker caches: compute every uncached token "
              "(manifest router.fetch: false)");
  s->add_option("--max-inflight", cfg->router.limits.max_inflight,
                "Requests in flight before new ones are rejected as overloaded")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  s->add_option("--max-queue-ms", o->max_queue_ms,
                "Refuse new requests (overloaded, HTTP 429 with Retry-After) while their "
                "estimated queue wait, from the measured service rate, exceeds this (0 = off)")
      ->check(CLI::Range(0u, 3'600'000u))
      ->capture_default_str();
  s->add_option("--ttft-slo-ms", o->ttft_slo_ms,
                "Also refuse new requests whose measured unloaded start time plus estimated "
                "queue wait exceeds this time to first token (0 = off)")
      ->check(CLI::Range(0u, 3'600'000u))
      ->capture_default_str();
  s->add_option("--admission-min-waiting", cfg->router.admission.min_waiting,
                "Always admit while fewer requests than this wait (adaptive admission's floor)")
      ->check(CLI::Range(0u, 1u << 20))
      ->capture_default_str();
  s->add_option("--admission-window-ms", o->admission_window_ms,
                "Time over which the service rate for --max-queue-ms is measured")
      ->check(CLI::Range(100u, 3'600'000u))
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
    if (o->prefill_workers_opt->count() > 0) cfg->prefill_workers = o->prefill_workers;
    if (o->compute_pool != "auto") cfg->shared_pool = o->compute_pool == "shared";
    if (o->tier.disk_blocks > 0 && o->tier.host_blocks == 0) {
      std::fprintf(stderr,
                   "tokenmill serve: --kv-disk-blocks %u needs --kv-host-blocks > 0 (blocks reach "
                   "the disk tier through the host tier)\n",
                   o->tier.disk_blocks);
      return 2;
    }
    cfg->prefill.tier = o->tier;
    cfg->decode.tier = o->tier;
    cfg->prefill_chunk_given = o->prefill_chunk_opt->count() > 0;
    if (o->decode_blocks_opt->count() > 0) cfg->decode_kv_blocks = o->decode_kv_blocks;
    if (o->prefill_blocks_opt->count() > 0) cfg->prefill_kv_blocks = o->prefill_kv_blocks;
    if (o->kv_memory_opt->count() > 0) {
      auto bytes = parse_memory_size(o->kv_memory);
      if (!bytes) {
        std::fprintf(stderr, "tokenmill serve: --kv-memory: %s\n", bytes.error().message.c_str());
        return 2;
      }
      cfg->kv_memory = *bytes;
    }
    auto span = [](double s) {
      return std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>(s));
    };
    cfg->router.request_timeout = span(o->request_timeout_s);
    cfg->router.stall_timeout = span(o->stall_timeout_s);
    cfg->router.admission.max_queue_ns = int64_t{o->max_queue_ms} * 1'000'000;
    cfg->router.admission.window_ns = int64_t{o->admission_window_ms} * 1'000'000;
    cfg->router.admission.ttft_slo_ns = int64_t{o->ttft_slo_ms} * 1'000'000;
    if (auto bad = check(cfg->router.admission)) {
      std::fprintf(stderr, "tokenmill serve: %s\n", bad->c_str());
      return 2;
    }
    cfg->decode.local_prefill_budget = cfg->prefill.token_budget;
    cfg->decode.recompute_ratio = cfg->prefill.recompute_ratio;
    if (auto b = parse_blend_policy(o->blend_policy)) cfg->prefill.blend = cfg->decode.blend = *b;
    if (auto f = parse_first_token_release(o->first_token)) cfg->decode.first_token = *f;
    cfg->http.host = cfg->rpc.host;
    cfg->http_enabled = !o->no_http;
    cfg->http.responses.ttl = std::chrono::seconds(o->responses_ttl_s);
    auto keys = serve_keys(*o);
    if (!keys) {
      std::fprintf(stderr, "tokenmill serve: %s\n", keys.error().message.c_str());
      return 2;
    }
    if (cfg->http.protect_metrics && !*keys) {
      std::fprintf(stderr,
                   "tokenmill serve: --protect-metrics needs --api-key or --api-key-file\n");
      return 2;
    }
    if (o->tls_cert.empty() != o->tls_key.empty()) {
      std::fprintf(stderr, "tokenmill serve: TLS needs both --tls-cert and --tls-key\n");
      return 2;
    }
    cfg->rpc.keys = *keys;
    cfg->http.keys = *keys;
    // One count of failed key attempts per client address, whichever port they came to.
    if (*keys) cfg->rpc.throttle = cfg->http.throttle = std::make_shared<auth_throttle>();
    cfg->rpc.tls_cert = cfg->http.tls_cert = o->tls_cert;
    cfg->rpc.tls_key = cfg->http.tls_key = o->tls_key;
    // Block the stop signals (and SIGHUP, the key reload) in every thread (they inherit
    // the mask) and wait for them here, so shutdown runs on this thread in order.
    sigset_t stop_set = block_stop_signals();
    sigaddset(&stop_set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);
    auto cluster = embedded_cluster::start(*cfg);
    if (!cluster) {
      std::fprintf(stderr, "tokenmill serve: %s\n", cluster.error().message.c_str());
      return 1;
    }
    std::string http = o->no_http ? std::string("off")
                                  : fmt::format("{}:{}", cfg->http.host, (*cluster)->http_port());
    const auto& topo = (*cluster)->topology();
    std::printf("tokenmill serve: %s\n", (*cluster)->kv_pools().summary.c_str());
    std::printf(
        "tokenmill ready: rpc=%s:%u http=%s engine=%s model=%s prefill_workers=%u "
        "decode_workers=%u threads=%u%s\n",
        cfg->rpc.host.c_str(), (*cluster)->rpc_port(), http.c_str(), cfg->engine.kind.c_str(),
        (*cluster)->model().name.c_str(), topo.prefill_workers, topo.decode_workers, topo.threads,
        topo.shared_pool ? " (shared)" : "");
    std::fflush(stdout);
    // Free heap memory goes back to the OS every few seconds (common/heap_release.hpp).
    heap_release_schedule release(static_cast<int64_t>(heap_release_interval_s * 1e9));
    int sig = 0;
    for (;;) {
      timespec tick{1, 0};
      sig = sigtimedwait(&stop_set, nullptr, &tick);
      if (release.due(now_ns())) release_free_heap();
      if (sig == SIGHUP) reload_keys(keys->get());
      if (sig == SIGINT || sig == SIGTERM) break;
    }
    std::printf("tokenmill: %s received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    std::fflush(stdout);
    (*cluster)->stop();
    cluster->reset();
    return 0;
  };
}

}  // namespace tokenmill::app
