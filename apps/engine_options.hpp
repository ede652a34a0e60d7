#pragma once
/// The engine options `tokenmill serve` and `tokenmill profile` share: --engine, --model,
/// the cpu and cuda engines' options, the sim engine's timing model and the KV layout, so
/// that a profile measures the engine `serve` (and a manifest) would run.
#include <string>

#include <CLI/CLI.hpp>

#include "common/result.hpp"
#include "engine/engine_factory.hpp"

namespace tokenmill::app {

/// What the options hold besides the engine_spec itself (units as the flags say).
struct engine_options {
  std::string kv_dtype = "f16";
  double prefill_us_per_token = 200;
  double prefill_base_us = 0;
  double decode_step_ms = 10;
  double decode_per_seq_us = 0;
  double decode_per_ctx_ns = 0;
  std::string weights_hugepages = "auto";  ///< --weights-hugepages: on, off, auto
  CLI::Option* engine_opt = nullptr;
  CLI::Option* model_opt = nullptr;
  /// The "kv cache" group (block layout): callers add their pool sizes to it.
  CLI::Option_group* kv_group = nullptr;
};

/// Registers the options on `app`, writing into `spec` and `o` (both outlive parsing).
/// `threads_help` explains what --threads 0 means for the caller.
void add_engine_options(CLI::App& app, engine_spec& spec, engine_options& o,
                        const std::string& threads_help);

/// Applies the parsed options to `spec`: --model implies the cpu engine unless --engine
/// says sim (an error: the sim engine has no model file), the cpu and cuda engines need
/// --model, the KV dtype and block size reach their configs, and the sim timings become
/// nanoseconds. Errors (errc::invalid_request) say which option is wrong.
result<void> resolve_engine_spec(engine_spec& spec, const engine_options& o);

}  // namespace tokenmill::app
