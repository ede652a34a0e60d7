#pragma once
/// The one place that decides which engine backend runs (STYLE.md §8).
#include <memory>
#include <string>

#include "common/result.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/engine.hpp"
#include "engine/model.hpp"
#include "engine/sim_engine.hpp"
#include "engine/tokenizer.hpp"
#include "engine/weights_memory.hpp"
#include "gpu/cuda_backend.hpp"

namespace tokenmill {

/// What the composition root asks for.
struct engine_spec {
  std::string kind = "sim";  ///< "sim", "cpu" or "cuda"
  sim_config sim;            ///< sim: the timing model
  std::string model_path;    ///< cpu, cuda: a GGUF file or a Hugging Face directory
  cpu_engine_config cpu;     ///< cpu: threads, KV dtype, block tokens
  /// cpu: where load_engine_model puts the weights (weights_memory.hpp); auto copies them
  /// into huge pages when the kernel's THP mode allows it (batch-1 decode reads them faster).
  weights_hugepages hugepages = weights_hugepages::auto_;
  cuda_engine_config cuda;  ///< cuda: device, dtype, KV dtype, block tokens, graphs
  /// cpu, cuda: the loaded model, shared by every engine of a process (load_engine_model).
  std::shared_ptr<const loaded_model> model;
};

/// Loads `spec.model_path` into `spec.model` when the engine needs a model and it is not
/// loaded yet; errors (errc::invalid_model) name the file and what is wrong with it.
result<void> load_engine_model(engine_spec& spec);

/// A new engine instance (each worker owns one). Errors: errc::invalid_request for an
/// unknown kind or a config the engine cannot serve ("<kind> engine: ..."; engine
/// constructors throw, and this is where that becomes a value), errc::invalid_model from
/// loading the model.
result<std::unique_ptr<engine>> make_engine(engine_spec spec);
/// The tokenizer of the model the spec describes; errors as make_engine's.
result<std::shared_ptr<const tokenizer>> make_tokenizer(engine_spec spec);

}  // namespace tokenmill
