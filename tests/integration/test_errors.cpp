// Bad requests and bad command lines: each fails with a message that names the problem,
// and the server keeps serving with every KV block returned.
#include <catch2/catch.hpp>

#include <csignal>

#include "harness.hpp"

using namespace tokenmill::testing;

namespace {

struct bad_case {
  std::string what;
  std::vector<std::string> args;  ///< generate arguments after --connect
  std::string expect;             ///< substring of stderr
};

void check_still_serving(const server& srv) {
  auto ok = srv.generate({"--max-tokens", "4", "--json", "still serving?"});
  INFO("stderr: " << ok.err);
  CHECK(ok.exit_code == 0);
  auto j = last_json_line(ok.out);
  CHECK((j.is_object() && j["tokens"] == 4));
  auto st = srv.status();
  INFO("status: " << st.dump());
  CHECK(workers_idle(st));
}

}  // namespace

TEST_CASE("invalid requests fail with a message naming the problem", "[integration]") {
  server srv{{"--max-context", "64"}};
  const std::vector<bad_case> cases{
      {"empty prompt", {""}, "prompt is empty"},
      {"empty id prompt", {"--token-ids", ""}, "prompt is empty"},
      {"max-tokens 0", {"--max-tokens", "0", "hi"}, "max_tokens"},
      {"max-tokens -5", {"--max-tokens", "-5", "hi"}, "max_tokens"},
      {"prompt over the context", {"--token-ids", id_prompt(1, 100)}, "context"},
      {"prompt + max_tokens over the context",
       {"--max-tokens", "60", "--token-ids", id_prompt(1, 8)},
       "context"},
      {"max_tokens far over the context", {"--max-tokens", "4294967297", "hi"}, "context"},
      {"negative token id", {"--token-ids", "5 -1 7"}, "-1"},
      {"token id == vocab", {"--token-ids", "5 32000"}, "32000"},
      {"token id far over vocab", {"--token-ids", "4294967296"}, "vocabulary"},
      {"non-numeric token id", {"--token-ids", "5 abc 7"}, "abc"},
      {"stop id outside the vocabulary", {"--stop-id", "-3", "hi"}, "stop token id"},
      {"negative temperature", {"--temperature", "-1", "hi"}, "temperature"},
      {"top_p 0", {"--top-p", "0", "hi"}, "top_p"},
      {"top_p over 1", {"--top-p", "2", "hi"}, "top_p"},
  };
  for (const auto& c : cases) {
    auto r = srv.generate(c.args);
    INFO(c.what << "\nstdout: " << r.out << "\nstderr: " << r.err);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code != 0);
    CHECK(r.err.find("tokenmill generate: invalid_request: ") != std::string::npos);
    CHECK(r.err.find(c.expect) != std::string::npos);
    check_still_serving(srv);
  }
  CHECK(srv.stop(SIGTERM) == 0);
}

TEST_CASE("requests that exactly fill the context are accepted", "[integration]") {
  server srv{{"--max-context", "64"}};
  auto a = srv.generate({"--max-tokens", "1", "--json", "--token-ids", id_prompt(1, 63)});
  INFO("stderr: " << a.err);
  CHECK(a.exit_code == 0);
  CHECK(last_json_line(a.out).value("tokens", -1) == 1);
  auto b = srv.generate({"--max-tokens", "56", "--json", "--token-ids", id_prompt(1, 8)});
  INFO("stderr: " << b.err);
  CHECK(b.exit_code == 0);
  CHECK(last_json_line(b.out).value("tokens", -1) == 56);
  check_still_serving(srv);
}

TEST_CASE("a request larger than the whole decode pool fails as out_of_blocks", "[integration]") {
  // 8 blocks of 16 tokens: 128 tokens at most.
  server srv{{"--decode-kv-blocks", "8"}};
  auto r = srv.generate({"--max-tokens", "200", "hi"});
  INFO("stderr: " << r.err);
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("out_of_blocks") != std::string::npos);
  check_still_serving(srv);
}

TEST_CASE("a request past the server-side timeout ends naming where it was stuck",
          "[integration][migration]") {
  // 500 tokens at 20 ms a step take 10 s; the router's bound is 1 s (checked every second).
  server srv{{"--request-timeout", "1"}, {"--sim-decode-step-ms", "20"}};
  auto r = srv.generate({"--max-tokens", "500", "hi"}, milliseconds(15000));
  INFO("stderr: " << r.err);
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("timeout") != std::string::npos);
  CHECK(r.err.find("in decode on worker") != std::string::npos);
  check_still_serving(srv);
  // The decode worker was told to stop: nothing stays reserved.
  CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(5000)));
}

// Regression (frontend/validate.cpp): `n + p.max_tokens > ctx` was computed in int64_t, so
// a max_tokens near INT64_MAX overflowed (UB; in practice it wrapped negative) and passed
// the context check; truncated to uint32_t 4294967295 it reached the decode worker, which
// failed it as out_of_blocks. It must be invalid_request naming the context.
TEST_CASE("a max_tokens near INT64_MAX is rejected against the context", "[integration]") {
  server srv{{"--max-context", "64"}};
  auto r = srv.generate({"--max-tokens", "9223372036854775807", "hi"});
  INFO("stderr: " << r.err);
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("invalid_request") != std::string::npos);
  CHECK(r.err.find("context") != std::string::npos);
  check_still_serving(srv);
}

TEST_CASE("bad command lines fail with a message naming the problem", "[integration]") {
  server srv;
  const std::string port = std::to_string(unused_port());
  const std::vector<bad_case> cases{
      {"unknown option", {"--bogus-option", "hi"}, "--bogus-option"},
      {"no port", {"--connect", "127.0.0.1", "hi"}, "HOST:PORT"},
      {"no host", {"--connect", ":7700", "hi"}, "HOST:PORT"},
      {"port 0", {"--connect", "127.0.0.1:0", "hi"}, "port"},
      {"port 99999", {"--connect", "127.0.0.1:99999", "hi"}, "99999"},
      {"non-numeric port", {"--connect", "127.0.0.1:http", "hi"}, "port"},
      {"unreachable port", {"--connect", "127.0.0.1:" + port, "hi"}, "cannot reach"},
  };
  for (const auto& c : cases) {
    // Run `tokenmill generate` directly so that a case can give its own --connect.
    std::vector<std::string> args{"generate"};
    if (c.args.front() != "--connect") args.insert(args.end(), {"--connect", srv.endpoint()});
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = run_tokenmill(args);
    INFO(c.what << "\nstdout: " << r.out << "\nstderr: " << r.err);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code != 0);
    CHECK(r.err.find(c.expect) != std::string::npos);
  }
  auto st = run_tokenmill({"status", "--connect", "127.0.0.1:" + port, "--json"});
  CHECK(st.exit_code != 0);
  CHECK(st.err.find("tokenmill status: ") != std::string::npos);
  check_still_serving(srv);
}

TEST_CASE("the weights-hugepages option takes on, off or auto and names a bad value",
          "[integration]") {
  // Checked before the model is opened: the path need not exist.
  for (const char* cmd : {"serve", "bench-engine"}) {
    auto r = run_tokenmill({cmd, "--model", "/nonexistent/m.gguf", "--weights-hugepages", "yes"});
    INFO(cmd << "\nstderr: " << r.err);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code != 0);
    CHECK(r.err.find("--weights-hugepages: 'yes' is not one of on, off, auto") !=
          std::string::npos);
  }
}

TEST_CASE("serve sizes KV pools from --kv-memory and refuses budgets it cannot use",
          "[integration]") {
  auto serve_fails = [](std::vector<std::string> extra, const std::string& expect) {
    std::vector<std::string> args{"serve", "--engine", "sim", "--rpc-port", "0", "--no-http"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = run_tokenmill(args, std::chrono::milliseconds(20000));
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code != 0);
    CHECK(r.err.find(expect) != std::string::npos);
  };
  serve_fails({"--kv-memory", "12X"}, "--kv-memory: '12X' is not a memory size");
  serve_fails({"--kv-memory", "-1G"}, "e.g. 512M or 2GiB");
  // The sim layout: 16 KiB blocks, 4096-token context = 256 blocks per sequence.
  serve_fails({"--kv-memory", "1M"}, "less than one full-context sequence");
  serve_fails({"--kv-memory", "1G", "--decode-kv-blocks", "8"}, "excludes");
  // 64 MiB = 4096 blocks, split 64:16 between the decode and the prefill worker.
  server srv{{"--kv-memory", "64M"}};
  auto st = srv.status();
  INFO(st.dump());
  CHECK(worker(st, "decode")["kv_total"] == 3276);
  CHECK(worker(st, "prefill")["kv_total"] == 819);
  check_still_serving(srv);
}
