#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "engine/engine_factory.hpp"
#include "test_result.hpp"

using namespace tokenmill;

namespace {
engine_spec sim_spec() {
  engine_spec spec;
  spec.sim.prefill_ns_per_token = 0;
  spec.sim.decode_base_ns = 0;
  spec.sim.vocab_size = 600;
  spec.sim.layout.head_dim = 4;
  spec.sim.layout.block_tokens = 4;
  return spec;
}
}  // namespace

TEST_CASE("the default spec asks for the sim engine", "[engine_factory]") {
  engine_spec spec;
  CHECK(spec.kind == "sim");
}

TEST_CASE("the engines' factory loads no cuBLAS into the process until a cuda engine needs it",
          "[engine_factory]") {
  // Linked, libcublas brings libcublasLt, whose load alone keeps ~140 MB resident: this
  // executable links the factory, and with it the CUDA backend where the build has one.
  auto e = test::value_or_fail(make_engine(sim_spec()));
  std::ifstream maps("/proc/self/maps");
  REQUIRE(maps);
  std::string line;
  size_t lines = 0;
  while (std::getline(maps, line)) {
    ++lines;
    INFO(line);
    CHECK(line.find("libcublas") == std::string::npos);
  }
  CHECK(lines > 0);
}

TEST_CASE("make_engine builds a working sim engine", "[engine_factory]") {
  auto spec = sim_spec();
  auto e = test::value_or_fail(make_engine(spec));
  REQUIRE(e);
  CHECK(e->info().name == "sim");
  CHECK(e->info().vocab_size == 600);
  CHECK(dynamic_cast<sim_engine*>(e.get()) != nullptr);

  block_pool pool(e->info().layout, 4);
  std::vector<token_id> prompt{300, 301, 302, 303, 304};
  std::vector<block_id> table{0, 1};
  prefill_chunk c{prompt, 0, 5, table, {}, {}};
  auto out = test::value_or_fail(e->prefill(pool, std::span<const prefill_chunk>(&c, 1)));
  REQUIRE(out.size() == 1);
  CHECK(out[0] >= sim_engine::first_word_id);
  CHECK(out[0] < 600);
  CHECK(e->check_kv(pool, prompt, table, 0, 5).ok());

  // Each call makes a new, independent instance.
  auto e2 = test::value_or_fail(make_engine(spec));
  REQUIRE(e2);
  CHECK(e2.get() != e.get());
}

TEST_CASE("make_tokenizer matches the sim vocabulary", "[engine_factory]") {
  auto spec = sim_spec();
  auto tok = test::value_or_fail(make_tokenizer(spec));
  REQUIRE(tok);
  CHECK(tok->vocab_size() == 600);
  CHECK(tok->encode("A", true) == std::vector<token_id>{1, 'A' + 3});
  CHECK(tok->piece('A' + 3) == "A");
}

TEST_CASE("an unknown engine kind gives an error naming it", "[engine_factory]") {
  auto spec = sim_spec();
  spec.kind =
      GENERATE(std::string("CUDA"), std::string("tensorrt"), std::string(""), std::string("SIM"));
  auto e = make_engine(spec);
  REQUIRE_FALSE(e);
  CHECK(e.error().code == errc::invalid_request);
  CHECK_THAT(e.error().message, Catch::Contains("unknown engine '" + spec.kind + "'"));
  CHECK_THAT(e.error().message, Catch::Contains("sim"));  // says what is available

  auto tok = make_tokenizer(spec);
  REQUIRE_FALSE(tok);
  CHECK(tok.error().code == errc::invalid_request);
  CHECK_THAT(tok.error().message, Catch::Contains("'" + spec.kind + "'"));
}

TEST_CASE("an invalid sim config is an error, not an exception", "[engine_factory]") {
  auto spec = sim_spec();
  spec.sim.vocab_size = 10;
  std::string error;
  REQUIRE_NOTHROW(error = test::error_text(make_engine(spec)));
  CHECK_THAT(error, Catch::Contains("sim engine") && Catch::Contains("vocab_size"));
  CHECK(make_engine(spec).error().code == errc::invalid_request);

  spec = sim_spec();
  spec.sim.layout.layers = 0;
  REQUIRE_NOTHROW(error = test::error_text(make_engine(spec)));
  CHECK_THAT(error, Catch::Contains("layers=0"));
}

TEST_CASE("the cuda engine needs a model and says why it cannot start", "[engine_factory]") {
  engine_spec spec;
  spec.kind = "cuda";
  auto e = make_engine(spec);
  REQUIRE_FALSE(e);
  CHECK(e.error().code == errc::invalid_model);
  CHECK_THAT(e.error().message, Catch::Contains("cuda engine needs a model file"));
  CHECK_THAT(test::error_text(make_tokenizer(spec)), Catch::Contains("--model"));

  spec.model_path = "/nonexistent/model.gguf";
  CHECK_THAT(test::error_text(make_engine(spec)), Catch::Contains("/nonexistent/model.gguf"));

  // With a model, a build or machine without CUDA gives the reason instead of an engine.
  std::string why;
  if (cuda_device_count(why) == 0) {
    CHECK_FALSE(why.empty());
    if (!cuda_backend_built()) {
      CHECK_THROWS_WITH(make_cuda_engine(nullptr, cuda_engine_config{}),
                        Catch::Contains("no CUDA backend"));
    }
  }
}
