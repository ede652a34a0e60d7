#pragma once
/// The one place that decides which engine backend runs (STYLE.md §8).
#include <memory>
#include <string>

#include "engine/engine.hpp"
#include "engine/sim_engine.hpp"
#include "engine/tokenizer.hpp"

namespace tokenmill {

/// What the composition root asks for.
struct engine_spec {
  std::string kind = "sim";  ///< "sim" (cpu and cuda arrive with the model engines)
  sim_config sim;
};

/// A new engine instance (each worker owns one), or nullptr with `error` set.
std::unique_ptr<engine> make_engine(const engine_spec& spec, std::string& error);
/// The tokenizer of the model the spec describes, or nullptr with `error` set.
std::unique_ptr<tokenizer> make_tokenizer(const engine_spec& spec, std::string& error);

}  // namespace tokenmill
