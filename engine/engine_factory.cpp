#include "engine/engine_factory.hpp"

#include <exception>
#include <string>

namespace tokenmill {

namespace {

bool needs_model(const engine_spec& spec) {
  return spec.kind == "cpu" || spec.kind == "cuda";
}

error_info unknown_kind(const engine_spec& spec) {
  return {errc::invalid_request, "unknown engine '" + spec.kind + "' (available: sim, cpu, cuda)"};
}

}  // namespace

result<void> load_engine_model(engine_spec& spec) {
  if (!needs_model(spec) || spec.model) return {};
  if (spec.model_path.empty())
    return error_info{errc::invalid_model,
                      "the " + spec.kind + " engine needs a model file (--model PATH)"};
  // Only the cpu engine streams the weights from host memory; cuda copies them to the device.
  const bool huge = spec.kind == "cpu" && use_weights_hugepages(spec.hugepages, read_thp_enabled());
  auto m = load_model(spec.model_path, huge);
  if (!m) return m.error();
  spec.model = std::move(*m);
  return {};
}

result<std::unique_ptr<engine>> make_engine(engine_spec spec) {
  using made = std::unique_ptr<engine>;
  try {
    if (spec.kind == "sim") return made(std::make_unique<sim_engine>(spec.sim));
    if (spec.kind == "cpu") {
      if (auto r = load_engine_model(spec); !r) return r.error();
      return made(std::make_unique<cpu_engine>(spec.model, spec.cpu));
    }
    if (spec.kind == "cuda") {
      if (auto r = load_engine_model(spec); !r) return r.error();
      return make_cuda_engine(spec.model, spec.cuda);
    }
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::string prefix = spec.kind + " engine: ";
    return error_info{errc::invalid_request, what.rfind(prefix, 0) == 0 ? what : prefix + what};
  }
  return unknown_kind(spec);
}

result<std::shared_ptr<const tokenizer>> make_tokenizer(engine_spec spec) {
  using made = std::shared_ptr<const tokenizer>;
  if (spec.kind == "sim") return made(std::make_shared<byte_word_tokenizer>(spec.sim.vocab_size));
  if (needs_model(spec)) {
    if (auto r = load_engine_model(spec); !r) return r.error();
    return spec.model->tok;
  }
  return unknown_kind(spec);
}

}  // namespace tokenmill
