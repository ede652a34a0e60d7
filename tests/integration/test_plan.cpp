// `tokenmill profile` and `tokenmill plan` end to end: a tiny sweep of the sim engine, a
// plan from its JSON, `tokenmill manifest check` on the written manifest; and the bad
// inputs of both commands, each refused with the option or field named.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness.hpp"

using namespace tokenmill::testing;
using nlohmann::json;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

/// `line` split at spaces.
std::vector<std::string> words(const std::string& line) {
  std::vector<std::string> w;
  std::istringstream in(line);
  for (std::string x; in >> x;)
    w.push_back(x);
  return w;
}

/// A sim engine with 2 ms per prefill call and 20 us per prompt token (saturated from
/// 1024 tokens per call at 90%), 4 ms decode steps: the whole sweep takes about a second.
std::vector<std::string> tiny_profile_args(const std::string& out) {
  auto a = words(
      "profile --engine sim --sim-prefill-base-us 2000 --sim-prefill-us-per-token 20 "
      "--sim-decode-step-ms 4 --sim-decode-per-seq-us 50 --chunks 64 256 1024 --prompt-lens "
      "1024 --batches 1 8 --contexts 128 512 --repeat 1 --decode-steps 2 -o");
  a.push_back(out);
  return a;
}

/// Indices of the values in plan_args, for the cases that change one.
namespace plan_arg {
constexpr size_t ttft = 4, itl = 6, rate = 8, input = 10, hosts = 14, per_host = 16, out = 19;
}

std::vector<std::string> plan_args(const std::string& profile, const std::string& out) {
  auto a = words(
      "plan --profile PROFILE --ttft-ms 400 --itl-ms 20 --rate 20 --input-len 1024 "
      "--output-len 64 --hosts 1 --workers-per-host 16 --json -o OUT");
  a[2] = profile;
  a[plan_arg::out] = out;
  return a;
}

}  // namespace

TEST_CASE("profile then plan then manifest check", "[plan]") {
  temp_dir dir("tokenmill-plan");
  const auto profile = dir.file("profile.json");
  auto prof = run_tokenmill(tiny_profile_args(profile), milliseconds(60000));
  INFO(prof.err);
  REQUIRE(prof.exit_code == 0);
  // Progress on stderr, the table on stdout, the JSON in the file.
  CHECK_THAT(prof.err, Catch::Contains("[profile 1/"));
  CHECK_THAT(prof.out, Catch::Contains("prefill saturates at"));
  auto j = json::parse(slurp(profile));
  CHECK(j["version"] == 1);
  CHECK(j["engine"]["kind"] == "sim");
  CHECK(j["layout"]["block_tokens"] == 16);
  CHECK(j["layout"]["max_blocks"].get<uint64_t>() > 0);
  CHECK(j["machine"]["cpu"].get<std::string>().size() > 0);
  // 3 single calls + 2 chunked 1024-token prompts; 2 contexts x 2 batches.
  CHECK(j["prefill"].size() == 5);
  CHECK(j["decode"].size() == 4);
  // The sim engine's modelled times come back (it sleeps them): 2 ms + 20 us x 1024.
  for (const auto& x : j["prefill"])
    if (x["chunk_tokens"] == 1024 && x["prompt_tokens"] == 1024)
      CHECK(x["seconds"].get<double>() >= 0.0224);
  const auto sat = j["saturation"]["chunk_tokens"].get<int>();
  CHECK((sat == 64 || sat == 256 || sat == 1024));

  // --json prints the same profile on stdout.
  auto again = run_tokenmill({"profile", "--engine", "sim", "--chunks", "32", "--prompt-lens", "64",
                              "--batches", "1", "--contexts", "64", "--repeat", "1",
                              "--decode-steps", "1", "--sim-decode-step-ms", "1", "--json"},
                             milliseconds(30000));
  REQUIRE(again.exit_code == 0);
  CHECK(json::parse(again.out)["prefill"].size() == 2);

  const auto manifest = dir.file("planned.yaml");
  auto plan = run_tokenmill(plan_args(profile, manifest));
  INFO(plan.out << plan.err);
  REQUIRE(plan.exit_code == 0);
  CHECK_THAT(plan.out, Catch::Contains("why:"));
  CHECK_THAT(plan.out, Catch::Contains("M/D/1"));
  auto figures = last_json_line(plan.out);
  REQUIRE(figures.is_object());
  CHECK(figures["feasible"] == true);
  CHECK(figures["prefill"]["ttft_p_s"].get<double>() <= 0.4);
  CHECK(figures["decode"]["itl_p_s"].get<double>() <= 0.020);
  const int prefill = figures["prefill"]["workers"], decode = figures["decode"]["workers"];
  CHECK(prefill >= 1);
  CHECK(decode >= 1);

  auto check = run_tokenmill({"manifest", "check", "--no-port-check", manifest});
  INFO(check.out << check.err << slurp(manifest));
  REQUIRE(check.exit_code == 0);
  // One node per worker besides the head: the resolved listing names each.
  CHECK_THAT(check.out, Catch::Contains("p" + std::to_string(prefill - 1) + ".prefill0"));
  CHECK_THAT(check.out, Catch::Contains("d" + std::to_string(decode - 1) + ".decode0"));

  // Four times the load takes more workers; too few host slots is refused with the count.
  auto heavy = plan_args(profile, dir.file("heavy.yaml"));
  heavy[plan_arg::rate] = "80";
  auto h = run_tokenmill(heavy);
  REQUIRE(h.exit_code == 0);
  auto hf = last_json_line(h.out);
  CHECK(hf["prefill"]["workers"].get<int>() + hf["decode"]["workers"].get<int>() >
        prefill + decode);
  auto cramped = heavy;
  cramped[plan_arg::per_host] = "1";
  cramped[plan_arg::out] = dir.file("cramped.yaml");
  auto c = run_tokenmill(cramped);
  CHECK(c.exit_code == 1);
  CHECK_THAT(c.err, Catch::Contains("refused") && Catch::Contains("workers, but 1 host(s)"));
  CHECK_FALSE(std::filesystem::exists(dir.file("cramped.yaml")));

  // An ITL below one decode step: no count can.
  auto fast = plan_args(profile, dir.file("never.yaml"));
  fast[plan_arg::itl] = "1";
  auto f = run_tokenmill(fast);
  CHECK(f.exit_code == 1);
  CHECK_THAT(f.err, Catch::Contains("no number of decode workers"));
  CHECK_FALSE(std::filesystem::exists(dir.file("never.yaml")));
}

TEST_CASE("plan and profile refuse bad input naming it", "[plan]") {
  temp_dir dir("tokenmill-plan");
  const auto good = dir.file("p.json");
  REQUIRE(run_tokenmill(tiny_profile_args(good), milliseconds(60000)).exit_code == 0);
  const auto out = dir.file("m.yaml");
  auto plan_err = [&](std::vector<std::string> args) {
    auto r = run_tokenmill(args);
    INFO(r.out << r.err);
    CHECK(r.exit_code == 2);
    CHECK_FALSE(std::filesystem::exists(out));
    return r.err;
  };
  CHECK_THAT(plan_err(plan_args(dir.file("missing.json"), out)),
             Catch::Contains("missing.json: cannot read"));
  write(dir.file("garbled.json"), "{\"version\": 1, \"engine\": ");
  CHECK_THAT(plan_err(plan_args(dir.file("garbled.json"), out)),
             Catch::Contains("garbled.json: not JSON"));
  auto edited = json::parse(slurp(good));
  edited["decode"][0]["step_seconds"] = "fast";
  write(dir.file("edited.json"), edited.dump());
  CHECK_THAT(plan_err(plan_args(dir.file("edited.json"), out)),
             Catch::Contains("decode[0].step_seconds: expected a number"));
  auto args = plan_args(good, out);
  args[plan_arg::ttft] = "0";
  CHECK_THAT(plan_err(args), Catch::Contains("--ttft-ms"));
  args = plan_args(good, out);
  args[plan_arg::itl] = "0";
  CHECK_THAT(plan_err(args), Catch::Contains("--itl-ms"));
  args = plan_args(good, out);
  args[plan_arg::rate] = "0";
  CHECK_THAT(plan_err(args), Catch::Contains("--rate"));
  args = plan_args(good, out);
  args[plan_arg::input] = "100000";
  CHECK_THAT(plan_err(args), Catch::Contains("exceed the model's context"));
  args = plan_args(good, out);
  args[plan_arg::hosts] = "a,,b";
  CHECK_THAT(plan_err(args), Catch::Contains("--hosts"));
  args = plan_args(good, out);
  args.erase(args.begin() + plan_arg::rate - 1, args.begin() + plan_arg::rate + 1);
  CHECK_THAT(plan_err(args), Catch::Contains("--rate"));

  auto bad_profile = [&](std::vector<std::string> args) {
    auto r = run_tokenmill(args);
    INFO(r.out << r.err);
    CHECK(r.exit_code != 0);
    return r.err;
  };
  CHECK_THAT(bad_profile({"profile", "--engine", "cpu"}), Catch::Contains("needs --model"));
  CHECK_THAT(bad_profile({"profile", "--engine", "cpu", "--model", dir.file("nope.gguf")}),
             Catch::Contains("nope.gguf"));
  CHECK_THAT(bad_profile({"profile", "--engine", "sim", "--max-context", "64", "--chunks", "128"}),
             Catch::Contains("--chunks"));
  CHECK_THAT(bad_profile({"profile", "--engine", "sim", "--batches", "0"}),
             Catch::Contains("--batches"));
}

TEST_CASE("plan takes length distributions and ShareGPT files", "[plan]") {
  temp_dir dir("tokenmill-plan");
  const auto profile = dir.file("p.json");
  REQUIRE(run_tokenmill(tiny_profile_args(profile), milliseconds(60000)).exit_code == 0);

  // Uniform lengths around the fixed ones: the M/G/1 model, the spread reported.
  auto ranged = plan_args(profile, dir.file("ranged.yaml"));
  ranged.insert(ranged.end() - 2, {"--range-ratio", "0.5", "--samples", "200"});
  auto r = run_tokenmill(ranged);
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("M/G/1") && Catch::Contains("200 samples (range ratio 0.5)"));
  auto rj = last_json_line(r.out);
  CHECK(rj["workload"]["samples"] == 200);
  CHECK(rj["workload"]["max_input"].get<int>() > 1024);
  CHECK(rj["workload"]["max_input"].get<int>() <= 1536);

  // A ShareGPT file: the prompts and answers tokenized by the profile's (sim) tokenizer.
  std::string entries = "[";
  for (int i = 0; i < 30; ++i) {
    if (i) entries += ",";
    entries += "{\"conversations\": [{\"from\": \"human\", \"value\": \"" +
               std::string(50 + 20 * i, 'q') + "\"}, {\"from\": \"gpt\", \"value\": \"" +
               std::string(20 + 5 * i, 'a') + "\"}]}";
  }
  entries += ", {\"conversations\": [{\"from\": \"human\", \"value\": \"alone\"}]}]";
  write(dir.file("share.json"), entries);
  auto shared = words(
      "plan --profile P --ttft-ms 400 --itl-ms 20 --rate 5 --dataset D --hosts 1 "
      "--workers-per-host 16 --json -o O");
  shared[2] = profile;
  shared[10] = dir.file("share.json");
  shared.back() = dir.file("share.yaml");
  auto s = run_tokenmill(shared);
  INFO(s.out << s.err);
  REQUIRE(s.exit_code == 0);
  CHECK_THAT(s.out, Catch::Contains("30 samples of"));
  auto sj = last_json_line(s.out);
  CHECK(sj["workload"]["samples"] == 30);
  CHECK(sj["feasible"] == true);
  REQUIRE(
      run_tokenmill({"manifest", "check", "--no-port-check", dir.file("share.yaml")}).exit_code ==
      0);

  // Bad datasets and mixed options are refused, naming them, and nothing is written.
  const auto out = dir.file("never.yaml");
  auto refused = [&](std::vector<std::string> args) {
    args.back() = out;
    auto x = run_tokenmill(args);
    INFO(x.out << x.err);
    CHECK(x.exit_code != 0);
    CHECK_FALSE(std::filesystem::exists(out));
    return x.err;
  };
  write(dir.file("broken.json"), "[{\"conversations\": ");
  auto broken = shared;
  broken[10] = dir.file("broken.json");
  CHECK_THAT(refused(broken), Catch::Contains("broken.json"));
  auto missing = shared;
  missing[10] = dir.file("absent.json");
  CHECK_THAT(refused(missing), Catch::Contains("absent.json"));
  auto both = shared;
  both.insert(both.end() - 2, {"--input-len", "64"});
  CHECK_THAT(refused(both), Catch::Contains("--dataset") || Catch::Contains("--input-len"));
  auto bad_ratio = ranged;
  bad_ratio[bad_ratio.size() - 5] = "1.5";
  CHECK_THAT(refused(bad_ratio), Catch::Contains("--range-ratio"));
}
