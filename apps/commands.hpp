#pragma once
/// Subcommands of the `tokenmill` executable. Each `add_*` registers its options on the
/// app and returns the function to run when it was chosen (exit code).
#include <functional>

#include <CLI/CLI.hpp>

namespace tokenmill::app {

using command = std::function<int()>;

command add_serve(CLI::App& app);
command add_generate(CLI::App& app);
command add_status(CLI::App& app);
command add_bench(CLI::App& app);
command add_node(CLI::App& app);
command add_manifest(CLI::App& app);
command add_launch(CLI::App& app);
/// `tokenmill k8s render`: a host manifest as Kubernetes objects (YAML files).
command add_k8s(CLI::App& app);
/// `tokenmill make-model`: writes a deterministic random-weight model from a preset.
command add_make_model(CLI::App& app);
/// `tokenmill bench-engine`: prefill/decode throughput of the CPU engine on a model.
command add_bench_engine(CLI::App& app);
/// `tokenmill bench-blend`: position-independent chunk reuse (re-rotation + selective
/// recompute) against full prefill and prefix caching: TTFT and fidelity per ratio.
command add_bench_blend(CLI::App& app);
/// `tokenmill bench-transfer`: UCX KV transport bandwidth/latency between two local processes.
command add_bench_transfer(CLI::App& app);
/// `tokenmill bench-fetch`: fetch throughput between two in-process decode workers
/// (inline or UCX transport), for the block sizes bench-transfer measures.
command add_bench_fetch(CLI::App& app);
/// `tokenmill bench-router`: the router's decision latency (prefix index + cost model) at
/// 1k-1M blocks and 8-128 workers.
command add_bench_router(CLI::App& app);
/// `tokenmill bench-wake`: how late this machine wakes a sleeping thread (the ITL floor).
command add_bench_wake(CLI::App& app);
/// `tokenmill trace`: the frontend's recent requests as a Chrome/Perfetto trace file.
command add_trace(CLI::App& app);
/// `tokenmill top`: a live view of every worker and the bottleneck.
command add_top(CLI::App& app);
/// `tokenmill profile`: an engine's prefill and decode costs as a planner needs them (JSON).
command add_profile(CLI::App& app);
/// `tokenmill plan`: workers, chunk, batch and local-prefill threshold from a profile and
/// SLOs, written as a host manifest.
command add_plan(CLI::App& app);
/// `tokenmill drain`: empties a node's workers without failing a request.
command add_drain(CLI::App& app);
/// `tokenmill certs init`: a cluster CA, node certificates and a cluster secret.
command add_certs(CLI::App& app);

}  // namespace tokenmill::app
