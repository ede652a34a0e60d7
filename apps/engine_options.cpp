#include "apps/engine_options.hpp"

#include <fmt/format.h>

namespace tokenmill::app {

void add_engine_options(CLI::App& app, engine_spec& spec, engine_options& o,
                        const std::string& threads_help) {
  o.engine_opt = app.add_option("--engine", spec.kind, "Model engine (cpu when --model is given)")
                     ->check(CLI::IsMember({"sim", "cpu", "cuda"}))
                     ->capture_default_str();
  o.model_opt = app.add_option("--model", spec.model_path,
                               "Model: a GGUF file or a Hugging Face directory "
                               "(tokenmill make-model writes one)");
  auto* c = app.add_option_group("cpu engine", "The CPU engine (with --model)");
  c->add_option("--threads", spec.cpu.threads, threads_help)->capture_default_str();
  c->add_option("--kv-dtype", o.kv_dtype, "KV cache element type")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->capture_default_str();
  c->add_option("--weights-hugepages", o.weights_hugepages,
                "Copy the weights into transparent huge pages (on: faster batch-1 decode, the "
                "whole file resident), map the file (off), or on when the kernel's THP mode is "
                "always/madvise (auto)")
      ->capture_default_str();
  auto* gpu = app.add_option_group("cuda engine", "The CUDA engine (--engine cuda --model PATH)");
  gpu->add_option("--device", spec.cuda.device, "CUDA device ordinal")->capture_default_str();
  gpu->add_option("--dtype", spec.cuda.dtype,
                  "Weights and GEMM inputs: bf16, f16, or f32 (parity with the cpu engine)")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  gpu->add_flag("!--no-cuda-graphs", spec.cuda.graphs,
                "Launch decode steps kernel by kernel instead of from captured CUDA graphs");
  auto& sim = spec.sim;
  auto* g = app.add_option_group("sim engine", "Timing model of the sim engine");
  g->add_option("--sim-prefill-us-per-token", o.prefill_us_per_token,
                "Prefill cost per prompt token (µs)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-prefill-base-us", o.prefill_base_us, "Prefill cost per engine call (µs)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-decode-step-ms", o.decode_step_ms, "Decode step base cost (ms)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-decode-per-seq-us", o.decode_per_seq_us,
                "Decode cost per sequence in the step (µs)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  g->add_option("--sim-decode-per-ctx-ns", o.decode_per_ctx_ns,
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
  o.kv_group = k;
}

result<void> resolve_engine_spec(engine_spec& spec, const engine_options& o) {
  if (o.model_opt->count() > 0 && spec.kind == "sim") {
    // --model implies the cpu engine unless --engine says sim explicitly.
    if (o.engine_opt->count() > 0)
      return error_info{errc::invalid_request,
                        "--model needs --engine cpu (the sim engine has no model file)"};
    spec.kind = "cpu";
  }
  if (spec.kind != "sim" && spec.model_path.empty())
    return error_info{errc::invalid_request,
                      fmt::format("--engine {} needs --model PATH", spec.kind)};
  auto huge = parse_weights_hugepages(o.weights_hugepages, "--weights-hugepages");
  if (!huge) return huge.error();
  spec.hugepages = *huge;
  spec.cpu.kv_dtype_bytes = o.kv_dtype == "f32" ? 4 : 2;
  spec.cpu.block_tokens = spec.sim.layout.block_tokens;
  spec.cuda.kv_dtype_bytes = spec.cpu.kv_dtype_bytes;
  spec.cuda.block_tokens = spec.sim.layout.block_tokens;
  auto& sim = spec.sim;
  sim.prefill_ns_per_token = static_cast<uint64_t>(o.prefill_us_per_token * 1e3);
  sim.prefill_base_ns = static_cast<uint64_t>(o.prefill_base_us * 1e3);
  sim.decode_base_ns = static_cast<uint64_t>(o.decode_step_ms * 1e6);
  sim.decode_per_seq_ns = static_cast<uint64_t>(o.decode_per_seq_us * 1e3);
  sim.decode_per_ctx_token_ns = static_cast<uint64_t>(o.decode_per_ctx_ns);
  return {};
}

}  // namespace tokenmill::app
