// Observability end to end: `tokenmill trace` against a serving process, and `tokenmill
// top` naming the slowed prefill worker of a launched cluster under load.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "frontend/http_client.hpp"
#include "harness.hpp"
#include "tests/skip.hpp"

using namespace tokenmill::testing;
using nlohmann::json;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// GET `target` from 127.0.0.1:`port`, parsed (null on any failure).
json get_json(uint16_t port, const std::string& target) {
  auto c = tokenmill::http_client::connect("127.0.0.1", port, 5);
  if (!c) return nullptr;
  auto r = (*c)->request("GET", target, {}, "", {}, 10);
  if (!r || r->status != 200) return nullptr;
  return json::parse(r->body, nullptr, false);
}

/// Stops `tokenmill launch` (SIGTERM, which stops its nodes) and SIGKILLs any node pid it
/// printed that is still there, whatever way the test ends.
struct launch_guard {
  process& launch;
  ~launch_guard() {
    if (launch.running()) {
      launch.signal(SIGTERM);
      launch.wait(milliseconds(15000));
    }
    std::istringstream in(launch.out());
    for (std::string line; std::getline(in, line);) {
      auto at = line.find("starting (pid ");
      if (line.rfind("launch: node ", 0) != 0 || at == std::string::npos) continue;
      auto pid = static_cast<pid_t>(std::stol(line.substr(at + 14)));
      std::string cmd = read_text("/proc/" + std::to_string(pid) + "/cmdline");
      if (pid > 0 && cmd.find("node") != std::string::npos) ::kill(pid, SIGKILL);
    }
  }
};

}  // namespace

TEST_CASE("the live /metrics passes promtool", "[observability]") {
  if (std::system("promtool --version >/dev/null 2>&1") != 0)
    TM_SKIP("promtool is not on PATH (scripts/setup.sh installs it; scripts/test.sh adds it)");
  server s;
  REQUIRE(s.http_port() != 0);
  REQUIRE(s.generate({"--max-tokens", "4", "hello"}).exit_code == 0);
  temp_dir dir("tokenmill-obs");
  const std::string file = dir.path() + "/metrics.txt";
  auto cmd = "curl -sS --max-time 10 http://127.0.0.1:" + std::to_string(s.http_port()) +
             "/metrics > " + file + " && promtool check metrics < " + file + " > " + file +
             ".out 2>&1";
  int rc = std::system(cmd.c_str());
  INFO(read_text(file + ".out"));
  CHECK(rc == 0);
  CHECK_THAT(read_text(file), Catch::Contains("tokenmill_"));
}

TEST_CASE("trace writes a Perfetto file with every TTFT stage of a request", "[observability]") {
  server s;
  REQUIRE(s.http_port() != 0);
  for (int i = 0; i < 3; ++i) {
    auto r = s.generate({"--token-ids", "--max-tokens", "8", id_prompt(100 + i, 40)});
    REQUIRE(r.exit_code == 0);
  }
  const std::string http = "127.0.0.1:" + std::to_string(s.http_port());
  auto log = get_json(s.http_port(), "/debug/requests?limit=10");
  REQUIRE(log.is_object());
  REQUIRE(log["requests"].size() == 3);
  const auto& first = log["requests"][0];
  INFO(first.dump());
  CHECK(first["api"] == "rpc");
  REQUIRE(first["stages"].size() >= 5);

  temp_dir dir("tokenmill-obs");
  const std::string out = dir.path() + "/trace.json";
  auto r = run_tokenmill({"trace", "--connect", http, "--out", out});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("3 requests"));
  CHECK_THAT(r.out, Catch::Contains("ui.perfetto.dev"));
  auto trace = json::parse(read_text(out), nullptr, false);
  REQUIRE(trace.is_object());
  REQUIRE(trace["traceEvents"].is_array());
  const std::string id = std::to_string(first["id"].get<uint64_t>());
  std::multiset<std::string> stages;
  size_t steps = 0;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] == "X") CHECK(e["dur"].get<double>() >= 0);
    if (e["ph"] == "X" && e["cat"] == "ttft" && e["args"]["request"] == id)
      stages.insert(e["name"]);
    if (e["name"] == "decode step" && e["args"]["tokens"].contains(id)) ++steps;
  }
  for (const auto& st : first["stages"])
    CHECK(stages.count(st["name"].get<std::string>()) == 1);
  // The router records the step behind every token; 8 tokens, the first from prefill.
  CHECK(first["steps"].size() == 8);
  CHECK(steps == 7);
  CHECK(first["decode_worker"] == "decode0");
  CHECK(first["prefill_worker"] == "prefill0");

  SECTION("generate --trace writes its own request") {
    const std::string own = dir.path() + "/own.json";
    auto g = s.generate({"--max-tokens", "4", "--trace", own, "hello"});
    INFO(g.err);
    REQUIRE(g.exit_code == 0);
    auto t = json::parse(read_text(own), nullptr, false);
    REQUIRE(t.is_object());
    std::set<std::string> names;
    for (const auto& e : t["traceEvents"])
      if (e["ph"] == "X") names.insert(e["name"].get<std::string>());
    for (const char* st : {"frontend_to_router", "routing", "prefill_compute", "kv_transfer",
                           "router_to_frontend", "decode step"})
      CHECK(names.count(st) == 1);
    auto bad = s.generate({"--max-tokens", "4", "--trace", "/nonexistent/dir/t.json", "hello"});
    CHECK(bad.exit_code != 0);
    CHECK_THAT(bad.err, Catch::Contains("/nonexistent/dir/t.json"));
  }
  SECTION("bad input: unreachable server, unwritable file") {
    auto gone = run_tokenmill({"trace", "--connect", "127.0.0.1:" + std::to_string(unused_port()),
                               "--out", out, "--timeout", "2"});
    CHECK(gone.exit_code != 0);
    CHECK_THAT(gone.err, Catch::Contains("cannot connect"));
    auto unwritable =
        run_tokenmill({"trace", "--connect", http, "--out", "/nonexistent/dir/t.json"});
    CHECK(unwritable.exit_code != 0);
    CHECK_THAT(unwritable.err, Catch::Contains("cannot write"));
    auto not_ours = run_tokenmill({"trace", "--connect", http + "x", "--out", out});
    CHECK(not_ours.exit_code != 0);
  }
  SECTION("the snapshot and top on an idle-ish single process") {
    auto snap = get_json(s.http_port(), "/debug/snapshot?window=60");
    REQUIRE(snap.is_object());
    CHECK(snap["requests"] == 3);
    CHECK(snap.contains("bottleneck"));
    CHECK(snap["workers"].size() >= 2);
    auto top = run_tokenmill({"top", "--connect", http, "--once"});
    INFO("top: " << top.out << top.err);
    CHECK(top.exit_code == 0);
    CHECK_THAT(top.out, Catch::Contains("\nbottleneck: "));
    auto metrics_ok = get_json(s.http_port(), "/debug/snapshot?window=abc");
    CHECK(metrics_ok.is_null());  // 400
  }
}

TEST_CASE("top names the slowed prefill worker of a cluster under load", "[observability]") {
  temp_dir dir("tokenmill-obs");
  std::set<uint16_t> taken;
  const uint16_t rpc = free_listen_port(taken), http = free_listen_port(taken);
  // Every listener gets a port found free: the default http ports of the other nodes
  // (frontend.http_port + 1 + index) could fall on one of the others and fail the launch.
  std::map<std::string, uint16_t> port, node_http;
  for (const char* n : {"head", "p0", "p1", "d0"}) {
    port[n] = free_listen_port(taken);
    node_http[n] = free_listen_port(taken);
  }
  std::ostringstream y;
  y << "cluster: obs\n"
    << "model:\n"
    << "  sim: {decode_step_ms: 2, prefill_us_per_token: 20}\n"
    << "defaults: {engine: sim, block_tokens: 16, kv_transport: inline}\n"
    << "failure: {heartbeat_ms: 100, connection_timeout_ms: 1000}\n"
    << "frontend: {node: head, rpc_port: " << rpc << ", http_port: " << http << "}\n"
    << "nodes:\n"
    << "  - {name: head, address: 127.0.0.1, port: " << port["head"]
    << ", actors: [router, supervisor, kv_store]}\n"
    << "  - {name: p0, address: 127.0.0.1, port: " << port["p0"]
    << ", http_port: " << node_http["p0"] << ", actors: [{prefill: {engine: sim, threads: 1}}]}\n"
    << "  - {name: p1, address: 127.0.0.1, port: " << port["p1"]
    << ", http_port: " << node_http["p1"]
    << ", actors: [{prefill: {engine: sim, threads: 1, slowdown: 4}}]}\n"
    << "  - {name: d0, address: 127.0.0.1, port: " << port["d0"]
    << ", http_port: " << node_http["d0"]
    << ", actors: [{decode: {engine: sim, threads: 1, max_batch: 32}}]}\n";
  const std::string manifest = dir.path() + "/cluster.yaml";
  {
    std::ofstream f(manifest);
    f << y.str();
  }
  process launch({tokenmill_bin(), "launch", manifest, "--log-dir", dir.path() + "/logs"});
  launch_guard guard{launch};
  auto ready = launch.wait_for_line(" ready after ", milliseconds(20000));
  if (!ready) {
    FAIL("launch did not become ready: " << launch.out() << launch.err());
  }
  const std::string rpc_ep = "127.0.0.1:" + std::to_string(rpc);
  const std::string http_ep = "127.0.0.1:" + std::to_string(http);
  process bench({tokenmill_bin(), "bench", "--connect", rpc_ep, "--no-progress", "--concurrency",
                 "4", "--requests", "400", "--input-len", "512", "--output-len", "8"});
  // top and the snapshot are read in the same poll: early in the run, before any request
  // finished, the bottleneck follows momentary queues and two reads apart can disagree.
  std::string last;
  nlohmann::json snap;
  bool named = eventually(
      [&] {
        auto r = run_tokenmill({"top", "--connect", http_ep, "--once", "--window", "10"},
                               milliseconds(5000));
        last = r.out + r.err;
        if (r.exit_code != 0 || last.find("\nbottleneck: p1.prefill0") == std::string::npos)
          return false;
        // The snapshot agrees, with numbers.
        snap = get_json(http, "/debug/snapshot?window=10");
        return snap.is_object() && snap["bottleneck_worker"] == "p1.prefill0";
      },
      milliseconds(10000), milliseconds(500));
  INFO("last top output:\n" << last << "\nlast snapshot: " << snap.dump());
  CHECK(named);
  CHECK_THAT(last, Catch::Contains("prefill"));
  REQUIRE(snap.is_object());
  CHECK(snap["bottleneck_worker"] == "p1.prefill0");
  bench.signal(SIGTERM);
  bench.wait(milliseconds(5000));
}
