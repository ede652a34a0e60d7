// Requests that end early (client killed, admission refused) and server shutdown.
#include <catch2/catch.hpp>

#include <csignal>

#include "harness.hpp"

using namespace tokenmill::testing;
using nlohmann::json;

namespace {

uint64_t completed(const json& status, const std::string& role) {
  auto w = worker(status, role);
  return w.is_object() ? w["completed"].get<uint64_t>() : ~uint64_t{0};
}

}  // namespace

TEST_CASE("a client killed mid-stream gets its KV blocks freed", "[integration]") {
  server srv{{"--sim-decode-step-ms", "5"}};
  // One finished request first, so that the counters are known to move.
  REQUIRE(srv.generate({"--max-tokens", "2", "warm up"}).exit_code == 0);
  auto before = srv.status();
  REQUIRE(before.is_object());

  process gen(srv.generate_argv({"--max-tokens", "2000", "a long story"}));
  REQUIRE(gen.wait_for_output(1, milliseconds(10000)));
  // Streaming, holding KV on the decode worker.
  auto mid = srv.status();
  INFO("mid-stream: " << mid.dump());
  CHECK(worker(mid, "decode")["kv_used"].get<int64_t>() > 0);
  CHECK(worker(mid, "decode")["running"].get<int64_t>() == 1);
  gen.kill();

  json last;
  bool idle = eventually(
      [&] {
        last = srv.status();
        return workers_idle(last);
      },
      milliseconds(5000));
  INFO("after kill: " << last.dump());
  CHECK(idle);
  // The decode worker did not count the cancelled request as completed. (The router's
  // `completed` counts every request that ended, cancelled ones included.)
  CHECK(completed(last, "decode") == completed(before, "decode"));

  // And the server still serves.
  auto ok = srv.generate({"--max-tokens", "3", "--json", "after the disconnect"});
  CHECK(ok.exit_code == 0);
  CHECK(srv.stop(SIGTERM) == 0);
}

TEST_CASE("a client killed during prefill gets its KV blocks freed", "[integration]") {
  // 1000 prompt tokens at 1 ms each: about a second of prefill, in 64-token chunks.
  server srv{{"--sim-prefill-us-per-token", "1000"}, {"--prefill-chunk", "64"}};
  auto before = srv.status();
  REQUIRE(before.is_object());
  process gen(srv.generate_argv({"--max-tokens", "4", "--token-ids", id_prompt(1, 1000)}));
  json mid;
  REQUIRE(eventually(
      [&] {
        mid = srv.status();
        auto p = worker(mid, "prefill");
        return p.is_object() && p["running"].get<int>() > 0;
      },
      milliseconds(10000), milliseconds(10)));
  INFO("during prefill: " << mid.dump());
  gen.kill();

  // The bound also covers a cancel that lands only when the first token is written, after
  // the remaining prefill (how it was before the regression below and in test_client.cpp).
  json last;
  bool idle = eventually(
      [&] {
        last = srv.status();
        return workers_idle(last);
      },
      milliseconds(10000));
  INFO("after kill: " << last.dump());
  CHECK(idle);
  CHECK(completed(last, "decode") == completed(before, "decode"));
  auto ok = srv.generate({"--max-tokens", "3", "short one"});
  CHECK(ok.exit_code == 0);
  CHECK(srv.stop(SIGTERM) == 0);
}

TEST_CASE("requests queue for KV blocks and all complete", "[integration]") {
  // 8 blocks of 16 tokens hold one of these requests (prompt + 100 tokens) at a time.
  server srv{{"--decode-kv-blocks", "8"}};
  std::vector<std::vector<std::string>> requests;
  for (int i = 0; i < 3; ++i)
    requests.push_back({"--max-tokens", "100", "--json", "--token-ids", id_prompt(10 * i + 1, 10)});
  std::vector<std::unique_ptr<process>> running;
  for (const auto& args : requests)
    running.push_back(std::make_unique<process>(srv.generate_argv(args)));
  std::vector<json> concurrent;
  for (auto& p : running) {
    auto code = p->wait(milliseconds(30000));
    INFO("stderr: " << p->err());
    REQUIRE(code);
    CHECK(*code == 0);
    concurrent.push_back(last_json_line(p->out()));
  }
  // The same requests one at a time give the same tokens.
  for (size_t i = 0; i < requests.size(); ++i) {
    auto r = srv.generate(requests[i]);
    REQUIRE(r.exit_code == 0);
    auto alone = last_json_line(r.out);
    REQUIRE(concurrent[i].is_object());
    CHECK(concurrent[i]["tokens"] == 100);
    CHECK(concurrent[i]["token_ids"] == alone["token_ids"]);
  }
  CHECK(workers_idle(srv.status()));
}

// Regression (decode worker / router cancellation): a request whose client disconnected
// while it waited in the decode worker's queue for KV blocks was not dropped from that
// queue. It stayed counted as queued (decode) and in flight (router, so it still took a
// --max-inflight slot) until the running request freed its blocks; then it was reserved
// and even prefilled before being discarded.
TEST_CASE("a client killed while queued for KV blocks leaves the queue", "[integration]") {
  // 8 blocks of 16 tokens hold one request of 3 + 100 tokens; at 100 ms a step the first
  // holds them for about 10 s, far longer than the bounded wait below.
  server srv{{"--decode-kv-blocks", "8"}, {"--sim-decode-step-ms", "100"}};
  process holder(srv.generate_argv({"--max-tokens", "100", "--token-ids", "1 2 3"}));
  REQUIRE(holder.wait_for_output(1, milliseconds(10000)));
  process waiter(srv.generate_argv({"--max-tokens", "100", "--token-ids", "4 5 6"}));
  json st;
  REQUIRE(eventually(
      [&] {
        st = srv.status();
        return worker(st, "decode").value("queued", 0) == 1;
      },
      milliseconds(10000), milliseconds(10)));
  waiter.kill();
  bool dropped = eventually(
      [&] {
        st = srv.status();
        return worker(st, "decode").value("queued", -1) == 0 &&
               worker(st, "router").value("queued", -1) == 1;
      },
      milliseconds(3000));
  INFO("after killing the queued client: " << st.dump());
  REQUIRE(holder.running());  // the check above ran while the blocks were still held
  CHECK(dropped);
  holder.kill();
  CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(5000)));
}

TEST_CASE("admission control refuses a request over --max-inflight", "[integration]") {
  server srv{{"--max-inflight", "1"}, {"--sim-decode-step-ms", "20"}};
  process first(srv.generate_argv({"--max-tokens", "200", "the one admitted"}));
  REQUIRE(first.wait_for_output(1, milliseconds(10000)));

  auto second = srv.generate({"--max-tokens", "4", "one too many"});
  INFO("stderr: " << second.err);
  CHECK_FALSE(second.timed_out);
  CHECK(second.exit_code != 0);
  CHECK(second.err.find("overloaded") != std::string::npos);
  CHECK(first.running());  // the refusal did not disturb the admitted request

  first.kill();
  // Once the killed request is cancelled its slot is free again.
  CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(5000)));
  run_result third;
  CHECK(eventually(
      [&] {
        third = srv.generate({"--max-tokens", "2", "admitted again"});
        return third.exit_code == 0;
      },
      milliseconds(5000), milliseconds(100)));
  INFO("stderr: " << third.err);
  CHECK(srv.stop(SIGTERM) == 0);
}

TEST_CASE("serve shuts down cleanly on SIGTERM and SIGINT", "[integration]") {
  auto sig = GENERATE(SIGTERM, SIGINT);
  INFO("signal " << sig);
  server srv;
  REQUIRE(srv.generate({"--max-tokens", "2", "before shutdown"}).exit_code == 0);
  auto code = srv.stop(sig, milliseconds(10000));
  INFO("stdout: " << srv.proc().out() << "\nstderr: " << srv.proc().err());
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK((srv.proc().out() + srv.proc().err()).find("shutting down") != std::string::npos);
}

TEST_CASE("serve shuts down cleanly with a request in flight", "[integration]") {
  server srv{{"--sim-decode-step-ms", "5"}};
  process gen(srv.generate_argv({"--max-tokens", "2000", "interrupted"}));
  REQUIRE(gen.wait_for_output(1, milliseconds(10000)));
  auto code = srv.stop(SIGTERM, milliseconds(10000));
  INFO("stdout: " << srv.proc().out() << "\nstderr: " << srv.proc().err());
  REQUIRE(code);
  CHECK(*code == 0);
  // The client sees the end of the stream as an error and exits on its own.
  auto gen_code = gen.wait(milliseconds(10000));
  INFO("client stderr: " << gen.err());
  REQUIRE(gen_code);
  CHECK(*gen_code != 0);
  CHECK(gen.err().find("tokenmill generate: ") != std::string::npos);
}
