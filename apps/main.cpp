// tokenmill: disaggregated LLM serving. `tokenmill --help` lists the subcommands.
#include <iostream>
#include <map>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "apps/commands.hpp"
#include "apps/version.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "tokenmill: LLM serving with prefill and decode disaggregated across actors and nodes"};
  app.require_subcommand(1);
  app.set_version_flag("--version",
                       std::string("tokenmill ") + tokenmill::app::version() + " (commit " +
                           tokenmill::app::git_commit() + ")",
                       "Print the version and the git commit it was built from, and exit");
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  std::map<CLI::App*, tokenmill::app::command> commands;
  auto add = [&](const char* name, const char* help, auto adder) {
    auto* sub = app.add_subcommand(name, help);
    commands[sub] = adder(*sub);
  };
  add("serve",
      "Run a whole cluster in one process (router, prefill, decode, kv-store, supervisor, "
      "Cap'n Proto frontend)",
      tokenmill::app::add_serve);
  add("generate", "Send one request and stream its tokens, then its timing summary",
      tokenmill::app::add_generate);
  add("status", "Show the cluster's members and their state", tokenmill::app::add_status);
  add("bench", "Load generator: concurrent streams against a running cluster",
      tokenmill::app::add_bench);
  add("node", "Run one node of a host manifest (joins the supervisor, runs the node's actors)",
      tokenmill::app::add_node);
  add("launch", "Start every node of a host manifest, wait until the cluster is ready, serve",
      tokenmill::app::add_launch);
  add("manifest", "Host manifest tools (check)", tokenmill::app::add_manifest);
  add("k8s", "Kubernetes: render a host manifest as ConfigMap, StatefulSets and Services (render)",
      tokenmill::app::add_k8s);
  add("certs", "Cluster certificates for mutual TLS between nodes, and the cluster secret (init)",
      tokenmill::app::add_certs);
  add("make-model",
      "Write a deterministic random-weight model (GGUF or Hugging Face) from a preset",
      tokenmill::app::add_make_model);
  add("bench-engine",
      "Measure the CPU engine on a model: prefill and decode throughput, memory bandwidth",
      tokenmill::app::add_bench_engine);
  add("bench-blend",
      "Measure chunk KV reuse regardless of position on the CPU engine: TTFT and fidelity of "
      "blending (re-rotation + selective recompute) per recompute ratio",
      tokenmill::app::add_bench_blend);
  add("bench-transfer",
      "Measure the UCX KV transport between two local processes (shm or tcp) against memcpy "
      "or ucx_perftest",
      tokenmill::app::add_bench_transfer);
  add("bench-fetch",
      "Measure fetch instead of recompute (a prefix pulled from a peer worker's cache) between "
      "two local decode workers, for bench-transfer's block sizes",
      tokenmill::app::add_bench_fetch);
  add("bench-router",
      "Measure the router's decision latency (prefix index + cost model) at 1k/100k/1M "
      "blocks and 8/32/128 workers, with the index's memory per block",
      tokenmill::app::add_bench_router);
  add("bench-wake",
      "Measure how late this machine wakes a sleeping thread: the floor under every ITL "
      "figure (a sleep, the sim engine's step wait, a thread woken by another)",
      tokenmill::app::add_bench_wake);
  add("trace",
      "Write the frontend's recent requests as a Chrome/Perfetto trace (open in "
      "ui.perfetto.dev)",
      tokenmill::app::add_trace);
  add("drain",
      "Empty a node's prefill and decode workers for maintenance without failing a request",
      tokenmill::app::add_drain);
  add("top", "Live view of every worker: queue, KV, share of TTFT, ITL, and the bottleneck",
      tokenmill::app::add_top);
  add("profile",
      "Measure an engine for the planner: prefill per chunk and prompt length, decode per "
      "batch and context, the prefill saturation point (JSON)",
      tokenmill::app::add_profile);
  add("plan",
      "From a profile, SLOs and a workload: how many prefill and decode workers with what "
      "chunk and batch, written as a host manifest (or why no count can do it)",
      tokenmill::app::add_plan);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("tokenmill"));
  spdlog::set_level(spdlog::level::from_str(log_level));
  for (auto& [sub, run] : commands)
    if (sub->parsed()) return run();
  return 2;
}
