#include "engine/engine_factory.hpp"

#include <stdexcept>

namespace tokenmill {

std::unique_ptr<engine> make_engine(const engine_spec& spec, std::string& error) {
  if (spec.kind != "sim") {
    error = "unknown engine '" + spec.kind + "' (available: sim)";
    return nullptr;
  }
  try {
    return std::make_unique<sim_engine>(spec.sim);
  } catch (const std::exception& e) {
    error = std::string("sim engine: ") + e.what();
    return nullptr;
  }
}

std::unique_ptr<tokenizer> make_tokenizer(const engine_spec& spec, std::string& error) {
  if (spec.kind != "sim") {
    error = "unknown engine '" + spec.kind + "' (available: sim)";
    return nullptr;
  }
  return std::make_unique<byte_word_tokenizer>(spec.sim.vocab_size);
}

}  // namespace tokenmill
