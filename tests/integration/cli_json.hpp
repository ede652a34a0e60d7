#pragma once
/// Catch-side helpers the integration tests share: `tokenmill generate --json` run to its
/// summary line, the tiny random cpu model, and a `serve` on the cpu engine.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "harness.hpp"

namespace tokenmill::testing {

/// Runs generate with --json and returns the summary line; REQUIREs success.
inline nlohmann::json generate_json(const server& srv, std::vector<std::string> args) {
  args.insert(args.begin(), "--json");
  auto r = srv.generate(args);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE_FALSE(r.timed_out);
  REQUIRE(r.exit_code == 0);
  auto j = last_json_line(r.out);
  REQUIRE(j.is_object());
  return j;
}

/// The generated token ids of a generate --json summary.
inline std::vector<int64_t> ids_of(const nlohmann::json& j) {
  return j.at("token_ids").get<std::vector<int64_t>>();
}

/// The tiny preset with random f32 weights (`tokenmill make-model`), written once per test
/// process into a temporary folder.
inline const std::string& tiny_random_model() {
  static const std::string path = [] {
    namespace fs = std::filesystem;
    auto dir = fs::temp_directory_path() / ("tokenmill-tiny-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    auto out = (dir / "tiny.gguf").string();
    auto r = run_tokenmill({"make-model", "--preset", "tiny", "--dtype", "f32", "-o", out});
    if (r.exit_code != 0) throw std::runtime_error("make-model failed: " + r.err);
    return out;
  }();
  return path;
}

/// `serve` on the cpu engine with one thread; with prefill workers every prompt goes to
/// one (disaggregated), without them the decode worker prefills locally.
inline server::options cpu_server(const std::string& model, int prefill_workers) {
  return {{"--engine", "cpu"},
          {"--model", model},
          {"--threads", "1"},
          {"--prefill-workers", std::to_string(prefill_workers)},
          {"--local-prefill-threshold", prefill_workers > 0 ? "0" : "1000000"}};
}

}  // namespace tokenmill::testing
