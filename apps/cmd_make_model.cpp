// `tokenmill make-model`: writes a deterministic random-weight model (GGUF file or Hugging
// Face directory) from a named preset; `--list` shows the presets.
#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "apps/commands.hpp"
#include "common/clock.hpp"
#include "engine/make_model.hpp"

namespace tokenmill::app {
namespace {

struct make_model_cli {
  std::string preset = "tiny";
  std::string type = "f16";
  std::string format = "gguf";
  uint64_t seed = 1;
  std::string output;
  bool list = false;
};

/// "12.3 MB" style (decimal units, as disk tools show them).
std::string human_bytes(uint64_t b) {
  if (b >= 1000ull * 1000 * 1000) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1000ull * 1000) return fmt::format("{:.1f} MB", b / 1e6);
  if (b >= 1000) return fmt::format("{:.1f} kB", b / 1e3);
  return fmt::format("{} B", b);
}

std::string human_count(uint64_t n) {
  if (n >= 1000ull * 1000 * 1000) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1000ull * 1000) return fmt::format("{:.1f}M", n / 1e6);
  if (n >= 1000) return fmt::format("{:.1f}K", n / 1e3);
  return fmt::format("{}", n);
}

/// Bytes of a file, or of every file under a directory.
uint64_t bytes_on_disk(const std::filesystem::path& p) {
  std::error_code ec;
  if (!std::filesystem::is_directory(p, ec)) return std::filesystem::file_size(p, ec);
  uint64_t n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(p, ec))
    if (e.is_regular_file(ec)) n += e.file_size(ec);
  return n;
}

void print_presets() {
  std::printf("%-12s %9s %5s %6s %9s %5s %7s %10s %10s %10s  %s\n", "preset", "params", "dim",
              "layers", "heads/kv", "ffn", "vocab", "f32", "f16", "bf16", "description");
  for (const auto& p : model_presets()) {
    const auto& c = p.config;
    std::printf("%-12s %9s %5u %6u %9s %5u %7u %10s %10s %10s  %s\n", p.name.c_str(),
                human_count(model_parameter_count(c)).c_str(), c.dim, c.layers,
                fmt::format("{}/{}", c.heads, c.kv_heads).c_str(), c.ffn, c.vocab,
                human_bytes(model_weight_bytes(c, dtype::f32)).c_str(),
                human_bytes(model_weight_bytes(c, dtype::f16)).c_str(),
                human_bytes(model_weight_bytes(c, dtype::bf16)).c_str(), p.description.c_str());
  }
}

}  // namespace

command add_make_model(CLI::App& app) {
  auto o = std::make_shared<make_model_cli>();
  app.add_flag("--list", o->list, "List the presets (shape, parameters, bytes per dtype)");
  app.add_option("--preset", o->preset, "Model shape (see --list)")->capture_default_str();
  std::vector<std::string> dtypes;
  for (dtype t : all_dtypes)
    dtypes.emplace_back(dtype_name(t));
  app.add_option("--dtype", o->type,
                 "Weight dtype of the matrices (norms and biases stay f32); the block formats "
                 "q4_0 ... q6_k quantize the random weights (gguf only)")
      ->check(CLI::IsMember(dtypes))
      ->capture_default_str();
  app.add_option("--format", o->format, "gguf: one file; hf: a Hugging Face directory")
      ->check(CLI::IsMember({"gguf", "hf"}))
      ->capture_default_str();
  app.add_option("--seed", o->seed, "Weight generator seed (same seed, same bytes)")
      ->capture_default_str();
  app.add_option("-o,--output", o->output, "Output file (gguf) or directory (hf)");
  return [o]() -> int {
    if (o->list) {
      print_presets();
      return 0;
    }
    if (o->output.empty()) {
      std::fprintf(stderr, "tokenmill make-model: -o PATH is required (or --list)\n");
      return 2;
    }
    make_model_options opts;
    opts.preset = o->preset;
    parse_dtype(o->type, opts.type);  // checked by CLI::IsMember above
    opts.format = o->format;
    opts.seed = o->seed;
    opts.output = o->output;
    auto t0 = now_ns();
    if (auto made = make_model(opts); !made) {
      std::fprintf(stderr, "tokenmill make-model: %s\n", made.error().message.c_str());
      return 1;
    }
    double secs = (now_ns() - t0) / 1e9;
    const auto& c = find_model_preset(opts.preset)->config;
    std::printf("wrote %s (%s, preset %s, %s, seed %llu): %s parameters, %s on disk, %.3f s\n",
                opts.output.c_str(), opts.format.c_str(), opts.preset.c_str(), o->type.c_str(),
                static_cast<unsigned long long>(opts.seed),
                human_count(model_parameter_count(c)).c_str(),
                human_bytes(bytes_on_disk(opts.output)).c_str(), secs);
    return 0;
  };
}

}  // namespace tokenmill::app
