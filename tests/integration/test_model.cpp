// A real model end to end: `tokenmill make-model` writes it, `tokenmill serve --model`
// serves it on the CPU engine, aggregated and disaggregated, from GGUF and from a Hugging
// Face directory; prefix reuse, stop strings and bad model files.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "cli_json.hpp"
#include "harness.hpp"

using namespace tokenmill::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

/// The test models, written once per test process into a temporary folder.
struct models {
  fs::path dir;
  std::string gguf;  ///< tiny preset, f32, GGUF
  std::string hf;    ///< the same weights as a Hugging Face directory
  models() {
    dir = fs::temp_directory_path() / ("tokenmill-models-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    gguf = (dir / "tiny.gguf").string();
    hf = (dir / "tiny-hf").string();
    for (auto [format, out] : {std::pair{"gguf", gguf}, std::pair{"hf", hf}}) {
      auto r = run_tokenmill(
          {"make-model", "--preset", "tiny", "--dtype", "f32", "--format", format, "-o", out});
      if (r.exit_code != 0) throw std::runtime_error("make-model failed: " + r.err);
    }
  }
  ~models() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

const models& test_models() {
  static models m;
  return m;
}

}  // namespace

TEST_CASE("a real model's tokens are the same aggregated, disaggregated and from HF files",
          "[integration][model]") {
  const auto& m = test_models();
  server aggregated(cpu_server(m.gguf, 0));
  server disaggregated(cpu_server(m.gguf, 1));
  server from_hf(cpu_server(m.hf, 1));
  // 40 prompt tokens: two full blocks and a partial one cross the transfer.
  const auto prompt = id_prompt(1, 40);
  for (auto sampling :
       {std::vector<std::string>{"--temperature", "0"},
        std::vector<std::string>{"--temperature", "0.9", "--seed", "7"},
        // Penalties read the sequence's history on whichever worker samples; logprobs come
        // from the real model's raw logits.
        std::vector<std::string>{"--temperature", "0.9", "--seed", "7", "--presence-penalty", "1",
                                 "--frequency-penalty", "0.5", "--repetition-penalty", "1.2",
                                 "--logit-bias", "5=3", "--logprobs", "2"}}) {
    std::vector<std::string> args{"--max-tokens", "24", "--ignore-eos", "--token-ids", prompt};
    args.insert(args.end(), sampling.begin(), sampling.end());
    auto a = generate_json(aggregated, args);
    auto d = generate_json(disaggregated, args);
    auto h = generate_json(from_hf, args);
    INFO(a.dump() << "\n" << d.dump());
    CHECK(ids_of(a).size() == 24);
    CHECK(ids_of(a) == ids_of(d));
    CHECK(ids_of(a) == ids_of(h));
    CHECK(d["stages"].contains("kv_transfer"));  // it really went through the prefill worker
    if (a.contains("logprobs")) {
      REQUIRE(a["logprobs"].size() == 24);
      REQUIRE(d["logprobs"].size() == 24);
      for (size_t i = 0; i < 24; ++i) {
        INFO("token " << i);
        CHECK(a["logprobs"][i]["logprob"].get<double>() ==
              Approx(d["logprobs"][i]["logprob"].get<double>()).margin(1e-4));
        CHECK(a["logprobs"][i]["top"].size() == 2);
        CHECK(a["logprobs"][i]["top"][0][0] == d["logprobs"][i]["top"][0][0]);
      }
    }
  }
  // Text prompts use the model's own tokenizer (the same vocabulary in both formats).
  std::vector<std::string> text{"--max-tokens", "8", "--ignore-eos", "the quick brown fox"};
  auto ta = generate_json(aggregated, text);
  auto th = generate_json(from_hf, text);
  CHECK(ta["prompt_tokens"] == th["prompt_tokens"]);
  CHECK(ids_of(ta) == ids_of(th));
  CHECK(ta["text"] == th["text"]);
}

TEST_CASE("a repeated prompt reuses cached KV blocks and gives the same tokens",
          "[integration][model]") {
  const auto& m = test_models();
  for (int prefill_workers : {0, 1}) {
    server srv(cpu_server(m.gguf, prefill_workers));
    std::vector<std::string> args{"--max-tokens", "6", "--ignore-eos", "--token-ids",
                                  id_prompt(100, 50)};
    auto first = generate_json(srv, args);
    auto second = generate_json(srv, args);
    CHECK(ids_of(first) == ids_of(second));
    auto st = srv.status();
    REQUIRE(st.is_object());
    auto role = prefill_workers > 0 ? "prefill" : "decode";
    auto w = worker(st, role);
    INFO(st.dump());
    // 50 tokens = 3 full blocks of 16; the second request reuses all three.
    CHECK_THAT(w["detail"].get<std::string>(), Catch::Contains("(3 reused)"));
    CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(5000)));
  }
}

TEST_CASE("a prefix evicted to the second KV tier is onboarded and gives the same tokens",
          "[integration][model][kv_tier]") {
  const auto& m = test_models();
  for (int prefill_workers : {0, 1}) {
    INFO("prefill workers: " << prefill_workers);
    // Pools of 8 blocks of 16 tokens: the second prompt (100 tokens) evicts the first's.
    auto opts = cpu_server(m.gguf, prefill_workers);
    opts["--decode-kv-blocks"] = "8";
    opts["--prefill-kv-blocks"] = "8";
    opts["--kv-host-blocks"] = "1";
    opts["--kv-disk-blocks"] = "8";
    server srv(opts);
    std::vector<std::string> a{"--max-tokens", "6", "--ignore-eos", "--token-ids",
                               id_prompt(100, 50)};
    std::vector<std::string> b{"--max-tokens", "6", "--ignore-eos", "--token-ids",
                               id_prompt(300, 100)};
    auto first = generate_json(srv, a);
    generate_json(srv, b);
    auto again = generate_json(srv, a);
    CHECK(ids_of(first) == ids_of(again));
    auto st = srv.status();
    REQUIRE(st.is_object());
    INFO(st.dump());
    auto w = worker(st, prefill_workers > 0 ? "prefill" : "decode");
    // The first prompt's last two full blocks were evicted (a sequence's tail goes first) to
    // the host tier (1 block) and on to disk, then copied back: none was recomputed.
    uint64_t onboarded = 0;
    for (const auto& t : w.at("tiers")) {
      onboarded += t.at("hits").get<uint64_t>();
      if (t.at("hits").get<uint64_t>() > 0) CHECK(t.at("bytes_out").get<uint64_t>() > 0);
    }
    CHECK(onboarded == 2);
    CHECK_THAT(w["detail"].get<std::string>(), Catch::Contains("(3 reused)"));
    CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(5000)));
  }
}

TEST_CASE("serve refuses a disk tier without a host tier, and a disk dir it cannot use",
          "[integration][kv_tier]") {
  auto r = run_tokenmill({"serve", "--engine", "sim", "--rpc-port", "0", "--kv-disk-blocks", "4"},
                         milliseconds(20000));
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("--kv-disk-blocks 4 needs --kv-host-blocks"));
  // A directory where no file can be made: the workers serve without the tier, and say why.
  server srv({{"--engine", "sim"},
              {"--kv-host-blocks", "4"},
              {"--kv-disk-blocks", "4"},
              {"--kv-disk-dir", "/nonexistent/tokenmill-tier"}});
  auto g = srv.generate({"--max-tokens", "2", "--token-ids", id_prompt(300, 20)});
  CHECK(g.exit_code == 0);
  auto st = srv.status();
  INFO(st.dump());
  CHECK(worker(st, "decode").at("tiers").empty());
}

TEST_CASE("a stop string ends the completion before it", "[integration][model]") {
  const auto& m = test_models();
  server srv(cpu_server(m.gguf, 0));
  std::vector<std::string> args{"--max-tokens", "32", "--ignore-eos", "once upon a time"};
  auto full = generate_json(srv, args);
  auto text = full["text"].get<std::string>();
  INFO(text);
  // Pick a stop string from the middle of the completion, on ASCII letters.
  size_t at = std::string::npos;
  for (size_t i = text.size() / 3; i + 3 < text.size(); ++i)
    if (std::isalpha(static_cast<unsigned char>(text[i])) &&
        std::isalpha(static_cast<unsigned char>(text[i + 1]))) {
      at = i;
      break;
    }
  if (at == std::string::npos) {
    WARN("the completion has no two ASCII letters in a row: " << text);
    return;
  }
  auto stop = text.substr(at, 2);
  auto first = text.find(stop);
  args.insert(args.end(), {"--stop", stop});
  auto cut = generate_json(srv, args);
  CHECK(cut["finish_reason"] == "stop");
  CHECK(cut["text"] == text.substr(0, first));
  CHECK(cut["tokens"].get<size_t>() < full["tokens"].get<size_t>());
  CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(5000)));
}

TEST_CASE("serve refuses a missing, truncated or foreign model file with a clear error",
          "[integration][model]") {
  const auto& m = test_models();
  auto serve_fails = [](const std::string& model, const std::string& expected) {
    auto r = run_tokenmill({"serve", "--model", model, "--rpc-port", "0"}, milliseconds(20000));
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains(expected));
  };
  serve_fails((m.dir / "nope.gguf").string(), "nope.gguf");
  // Truncated: the first half of a real model file.
  auto cut = (m.dir / "truncated.gguf").string();
  {
    std::ifstream in(m.gguf, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(cut, std::ios::binary).write(bytes.data(), bytes.size() / 2);
  }
  serve_fails(cut, "truncated.gguf");
  // Not a model at all.
  auto junk = (m.dir / "junk.gguf").string();
  std::ofstream(junk) << "this is not a model\n";
  serve_fails(junk, "junk.gguf");
  // An HF directory without its tokenizer.
  auto broken = m.dir / "broken-hf";
  fs::create_directories(broken);
  fs::copy_file(fs::path(m.hf) / "config.json", broken / "config.json");
  fs::copy_file(fs::path(m.hf) / "model.safetensors", broken / "model.safetensors");
  serve_fails(broken.string(), "tokenizer.json");
}

TEST_CASE("with two decode workers a repeated prompt is routed to the one holding its prefix",
          "[integration][model]") {
  const auto& m = test_models();
  auto opts = cpu_server(m.gguf, 0);
  opts["--decode-workers"] = "2";
  server srv(opts);
  std::vector<std::string> args{"--max-tokens", "4", "--ignore-eos", "--token-ids",
                                id_prompt(200, 40)};
  auto first = generate_json(srv, args);
  auto second = generate_json(srv, args);
  CHECK(ids_of(first) == ids_of(second));
  auto st = srv.status();
  REQUIRE(st.is_object());
  INFO(st.dump());
  CHECK_THAT(worker(st, "router")["detail"].get<std::string>(),
             Catch::Contains("1 routed to a cached prefix"));
}
