#include "engine/engine_factory.hpp"

#include <stdexcept>

namespace tokenmill {

namespace {

bool needs_model(const engine_spec& spec) {
  return spec.kind == "cpu" || spec.kind == "cuda";
}

}  // namespace

error_info load_engine_model(engine_spec& spec) {
  if (!needs_model(spec) || spec.model) return {};
  if (spec.model_path.empty())
    return {errc::invalid_model, "the " + spec.kind + " engine needs a model file (--model PATH)"};
  auto m = load_model(spec.model_path);
  if (!m) return m.error();
  spec.model = std::move(*m);
  return {};
}

std::unique_ptr<engine> make_engine(engine_spec spec, std::string& error) {
  try {
    if (spec.kind == "sim") return std::make_unique<sim_engine>(spec.sim);
    if (spec.kind == "cpu") {
      if (auto err = load_engine_model(spec)) {
        error = err.message;
        return nullptr;
      }
      return std::make_unique<cpu_engine>(spec.model, spec.cpu);
    }
    if (spec.kind == "cuda") {
      if (auto err = load_engine_model(spec)) {
        error = err.message;
        return nullptr;
      }
      return make_cuda_engine(spec.model, spec.cuda);
    }
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::string prefix = spec.kind + " engine: ";
    error = what.rfind(prefix, 0) == 0 ? what : prefix + what;
    return nullptr;
  }
  error = "unknown engine '" + spec.kind + "' (available: sim, cpu, cuda)";
  return nullptr;
}

std::shared_ptr<const tokenizer> make_tokenizer(engine_spec spec, std::string& error) {
  if (spec.kind == "sim") return std::make_shared<byte_word_tokenizer>(spec.sim.vocab_size);
  if (needs_model(spec)) {
    if (auto err = load_engine_model(spec)) {
      error = err.message;
      return nullptr;
    }
    return spec.model->tok;
  }
  error = "unknown engine '" + spec.kind + "' (available: sim, cpu, cuda)";
  return nullptr;
}

}  // namespace tokenmill
