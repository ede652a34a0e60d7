// `tokenmill serve`: a whole cluster in one process.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "apps/commands.hpp"
#include "cluster/embedded_cluster.hpp"

namespace tokenmill::app {

struct serve_opts {
  std::string kv_dtype = "f16";
  double prefill_us_per_token = 200;
  double prefill_base_us = 0;
  double decode_step_ms = 10;
  double decode_per_seq_us = 0;
  double decode_per_ctx_ns = 0;
  bool no_http = false;
  double request_timeout_s = 600;  ///< router_config::request_timeout
  double stall_timeout_s = 120;    ///< router_config::stall_timeout
};

command add_serve(CLI::App& app) {
  auto cfg = std::make_shared<embedded_config>();
  auto o = std::make_shared<serve_opts>();
  auto* engine_opt =
      app.add_option("--engine", cfg->engine.kind, "Model engine (cpu when --model is given)")
          ->check(CLI::IsMember({"sim", "cpu", "cuda"}))
          ->capture_default_str();
  auto* model_opt = app.add_option("--model", cfg->engine.model_path,
                                   "Model to serve: a GGUF file or a Hugging Face directory "
                                   "(tokenmill make-model writes one)");
  auto* c = app.add_option_group("cpu engine", "The CPU engine (with --model)");
  c->add_option("--threads", cfg->engine.cpu.threads,
                "Compute threads per worker (0 = this machine's cores / workers)")
      ->capture_default_str();
  c->add_option("--kv-dtype", o->kv_dtype, "KV cache element type")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->capture_default_str();
  auto* gpu_opts =
      app.add_option_group("cuda engine", "The CUDA engine (--engine cuda --model PATH)");
  gpu_opts->add_option("--device", cfg->engine.cuda.device, "CUDA device ordinal")
      ->capture_default_str();
  gpu_opts
      ->add_option("--dtype", cfg->engine.cuda.dtype,
                   "Weights and GEMM inputs: bf16, f16, or f32 (parity with the cpu engine)")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  gpu_opts->add_flag("!--no-cuda-graphs", cfg->engine.cuda.graphs,
                     "Launch decode steps kernel by kernel instead of from captured CUDA graphs");
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
  app.add_option("--cluster-name", cfg->cluster_name)->capture_default_str();
  app.add_option("--prefill-workers", cfg->prefill_workers,
                 "Prefill workers (0 = prefill on the decode workers)")
      ->capture_default_str();
  app.add_option("--decode-workers", cfg->decode_workers)
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  // Sim timing model.
  auto& sim = cfg->engine.sim;
  auto* g = app.add_option_group("sim engine", "Timing model of the sim engine");
  g->add_option("--sim-prefill-us-per-token", o->prefill_us_per_token,
                "Prefill cost per prompt token (µs)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-prefill-base-us", o->prefill_base_us, "Prefill cost per engine call (µs)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-decode-step-ms", o->decode_step_ms, "Decode step base cost (ms)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-decode-per-seq-us", o->decode_per_seq_us,
                "Decode cost per sequence in the step (µs)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-decode-per-ctx-ns", o->decode_per_ctx_ns,
                "Decode cost per context token (ns)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-slowdown", sim.slowdown, "Multiplies every modelled time")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  g->add_option("--vocab", sim.vocab_size, "Vocabulary size")
      ->check(CLI::Range(260u, 1u << 24))
      ->capture_default_str();
  g->add_option("--max-context", sim.max_context, "Context length (tokens)")
      ->check(CLI::Range(2u, 1u << 20))
      ->capture_default_str();
  // KV layout and pools.
  auto* k = app.add_option_group("kv cache", "KV block layout and pool sizes");
  k->add_option("--block-tokens", sim.layout.block_tokens)
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  k->add_option("--kv-layers", sim.layout.layers)
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  k->add_option("--kv-heads", sim.layout.kv_heads)
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  k->add_option("--head-dim", sim.layout.head_dim)
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
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

  return [cfg, o, model_opt, engine_opt]() -> int {
    if (model_opt->count() > 0 && cfg->engine.kind == "sim") {
      // --model implies the cpu engine unless --engine says sim explicitly.
      if (engine_opt->count() > 0) {
        std::fprintf(stderr,
                     "tokenmill serve: --model needs --engine cpu (the sim engine has "
                     "no model file)\n");
        return 2;
      }
      cfg->engine.kind = "cpu";
    }
    if (cfg->engine.kind != "sim" && cfg->engine.model_path.empty()) {
      std::fprintf(stderr, "tokenmill serve: --engine %s needs --model PATH\n",
                   cfg->engine.kind.c_str());
      return 2;
    }
    auto span = [](double s) {
      return std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>(s));
    };
    cfg->router.request_timeout = span(o->request_timeout_s);
    cfg->router.stall_timeout = span(o->stall_timeout_s);
    cfg->engine.cpu.kv_dtype_bytes = o->kv_dtype == "f32" ? 4 : 2;
    cfg->engine.cpu.block_tokens = cfg->engine.sim.layout.block_tokens;
    cfg->engine.cuda.kv_dtype_bytes = cfg->engine.cpu.kv_dtype_bytes;
    cfg->engine.cuda.block_tokens = cfg->engine.sim.layout.block_tokens;
    auto& sim = cfg->engine.sim;
    sim.prefill_ns_per_token = static_cast<uint64_t>(o->prefill_us_per_token * 1e3);
    sim.prefill_base_ns = static_cast<uint64_t>(o->prefill_base_us * 1e3);
    sim.decode_base_ns = static_cast<uint64_t>(o->decode_step_ms * 1e6);
    sim.decode_per_seq_ns = static_cast<uint64_t>(o->decode_per_seq_us * 1e3);
    sim.decode_per_ctx_token_ns = static_cast<uint64_t>(o->decode_per_ctx_ns);
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
