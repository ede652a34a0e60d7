// Clusters from a host manifest: `tokenmill launch` starting one `tokenmill node` process
// per node on loopback, requests through them, and nodes killed, stopped, refused or
// unable to start. Every manifest lives in its own temporary folder with free ports, and
// every node process of a test is gone when the test ends, passed or failed.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "frontend/http_client.hpp"
#include "harness.hpp"

using namespace tokenmill::testing;
using nlohmann::json;
using steady = std::chrono::steady_clock;

namespace {

constexpr milliseconds kReadyTimeout{20000};
/// The issue's contract: a failed node ends its in-flight requests within 5 s.
constexpr milliseconds kFailureBound{5000};

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

/// Prints a measured time on stderr when TOKENMILL_TEST_TIMINGS is set (never asserted).
void report_timing(const std::string& what, double seconds) {
  if (std::getenv("TOKENMILL_TEST_TIMINGS"))
    std::fprintf(stderr, "[multinode timing] %s: %.3f s\n", what.c_str(), seconds);
}

/// Some line of `out` contains every one of `parts`.
bool has_line(const std::string& out, const std::vector<std::string>& parts) {
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    bool all = true;
    for (const auto& p : parts)
      all = all && line.find(p) != std::string::npos;
    if (all) return true;
  }
  return false;
}

// ------------------------------------------------------------------ processes by manifest

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Live (not zombie) `tokenmill node` processes started from `manifest_path`.
std::vector<pid_t> node_pids(const std::string& manifest_path) {
  std::vector<pid_t> pids;
  DIR* d = ::opendir("/proc");
  if (!d) return pids;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    std::string dir = std::string("/proc/") + e->d_name;
    std::string cmd = read_file(dir + "/cmdline");
    std::vector<std::string> args;
    for (size_t at = 0; at < cmd.size();) {
      size_t nul = cmd.find('\0', at);
      if (nul == std::string::npos) nul = cmd.size();
      args.push_back(cmd.substr(at, nul - at));
      at = nul + 1;
    }
    bool is_node = false, ours = false;
    for (size_t k = 0; k < args.size(); ++k) {
      if (args[k] == "node") is_node = true;
      if (args[k] == "--manifest" && k + 1 < args.size() && args[k + 1] == manifest_path)
        ours = true;
    }
    if (!is_node || !ours) continue;
    // "PID (comm) STATE ...": skip zombies, which are gone but not yet reaped.
    std::string stat = read_file(dir + "/stat");
    auto paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z') continue;
    pids.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(d);
  return pids;
}

bool no_nodes_left(const std::string& manifest_path, milliseconds timeout = milliseconds(5000)) {
  return eventually([&] { return node_pids(manifest_path).empty(); }, timeout);
}

/// The command line of `pid` contains `needle` (used before signalling a pid we parsed).
bool cmdline_has(pid_t pid, const std::string& needle) {
  std::string cmd = read_file("/proc/" + std::to_string(pid) + "/cmdline");
  for (auto& c : cmd)
    if (c == '\0') c = ' ';
  return cmd.find(needle) != std::string::npos;
}

// ------------------------------------------------------------------ manifests

/// What varies between the tests' manifests; everything else is fixed and fast.
struct cluster_spec {
  std::string name = "mn";
  std::vector<std::string> decode_nodes{"d0"};
  double decode_step_ms = 2;
  double prefill_us_per_token = 20;
  /// p0's address. 192.0.2.1 (TEST-NET-1, never local) makes p0 unable to listen.
  std::string p0_address = "127.0.0.1";
  /// The frontend's bind address; empty = the head node's address.
  std::string frontend_host;
  std::string kv_transport = "inline";  ///< "inline" or "ucx"
  /// The manifest's restart policy. Off here, so that the tests of a node's death see the
  /// node stay down; the restart tests turn it on.
  std::string restart = "{max: 0}";
  uint32_t prefill_workers = 1;    ///< prefill actors on p0
  uint32_t prefill_kv_blocks = 0;  ///< each prefill actor's KV pool, blocks (0: the default)
  std::string planner;             ///< the manifest's `planner:` section (empty: none)
  /// A model file (`tokenmill make-model`): every worker runs the cpu engine on it. Empty:
  /// the sim engine.
  std::string model_path;
  std::string router;  ///< the manifest's `router:` section (empty: none)
};

/// Distinct free ports: one per node, plus the frontend's RPC and HTTP ports.
struct port_plan {
  uint16_t rpc = 0;
  uint16_t http = 0;
  std::map<std::string, uint16_t> node;
  std::map<std::string, uint16_t> node_http;  ///< /metrics of the nodes but the head
};

port_plan plan_ports(const cluster_spec& spec) {
  std::vector<std::string> names{"head", "p0"};
  names.insert(names.end(), spec.decode_nodes.begin(), spec.decode_nodes.end());
  std::set<uint16_t> taken;
  port_plan plan;
  plan.rpc = free_listen_port(taken);
  plan.http = free_listen_port(taken);
  for (const auto& n : names) {
    plan.node[n] = free_listen_port(taken);
    if (n != "head") plan.node_http[n] = free_listen_port(taken);
  }
  return plan;
}

std::string manifest_yaml(const cluster_spec& spec, const port_plan& ports) {
  std::ostringstream y;
  y << "cluster: " << spec.name << "\n"
    << "model:\n";
  const std::string engine = spec.model_path.empty() ? "sim" : "cpu";
  if (spec.model_path.empty())
    y << "  sim: {decode_step_ms: " << spec.decode_step_ms
      << ", prefill_us_per_token: " << spec.prefill_us_per_token << "}\n";
  else
    y << "  path: " << spec.model_path << "\n";
  y << "defaults: {engine: " << engine << ", block_tokens: 16, kv_transport: " << spec.kv_transport
    << "}\n"
    << "failure: {heartbeat_ms: 100, connection_timeout_ms: 500}\n"
    << "restart: " << spec.restart << "\n"
    << (spec.planner.empty() ? "" : "planner: " + spec.planner + "\n")
    << (spec.router.empty() ? "" : "router: " + spec.router + "\n")
    // A p0 on another address makes the cluster span hosts, which needs TLS or this.
    << (spec.p0_address == "127.0.0.1" ? "" : "security: {insecure: true}\n")
    << "frontend: {node: head, "
    << (spec.frontend_host.empty() ? "" : "host: " + spec.frontend_host + ", ")
    << "rpc_port: " << ports.rpc << ", http_port: " << ports.http << "}\n"
    << "nodes:\n"
    << "  - name: head\n"
    << "    address: 127.0.0.1\n"
    << "    port: " << ports.node.at("head") << "\n"
    << "    actors: [router, supervisor, kv_store]\n"
    << "  - name: p0\n"
    << "    address: " << spec.p0_address << "\n"
    << "    port: " << ports.node.at("p0") << "\n"
    << "    http_port: " << ports.node_http.at("p0") << "\n"
    << "    actors: [";
  for (uint32_t i = 0; i < spec.prefill_workers; ++i)
    y << (i ? ", " : "") << "{prefill: {engine: " << engine << ", threads: 1"
      << (spec.prefill_kv_blocks ? ", kv_blocks: " + std::to_string(spec.prefill_kv_blocks) : "")
      << "}}";
  y << "]\n";
  for (const auto& d : spec.decode_nodes)
    y << "  - name: " << d << "\n"
      << "    address: 127.0.0.1\n"
      << "    port: " << ports.node.at(d) << "\n"
      << "    http_port: " << ports.node_http.at(d) << "\n"
      << "    actors: [{decode: {engine: " << engine << ", threads: 1, max_batch: 32}}]\n";
  return y.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

// ------------------------------------------------------------------ a launched cluster

/// A manifest in its own temporary folder, and optionally `tokenmill launch` running it.
/// The destructor stops launch (SIGTERM, then SIGKILL) and SIGKILLs any node process of
/// this manifest that is left, so that nothing outlives the test.
class cluster {
 public:
  explicit cluster(cluster_spec spec = {}) : spec_(std::move(spec)), ports_(plan_ports(spec_)) {
    manifest_ = dir_.path() + "/cluster.yaml";
    write_file(manifest_, manifest_yaml(spec_, ports_));
  }
  ~cluster() { cleanup(); }
  cluster(const cluster&) = delete;
  cluster& operator=(const cluster&) = delete;

  const std::string& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_.path(); }
  const cluster_spec& spec() const { return spec_; }
  const port_plan& ports() const { return ports_; }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(ports_.rpc); }

  /// Starts `tokenmill launch` (not waiting for anything).
  process& start(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{tokenmill_bin(), "launch", manifest_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    for (size_t k = 0; k + 1 < extra.size(); ++k)
      if (extra[k] == "--log-dir") log_dir_ = extra[k + 1];
    launch_ = std::make_unique<process>(argv);
    return *launch_;
  }

  /// Starts launch and waits for its ready line; throws with its output when it does not
  /// come. Records every node's pid from the "starting (pid N)" lines.
  void launch(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"--log-dir", dir_.path() + "/logs"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto t0 = steady::now();
    start(args);
    auto line = launch_->wait_for_line(" ready after ", kReadyTimeout);
    report_timing("launch ready (spawn to ready line)", seconds_since(t0));
    if (!line) {
      launch_->wait(milliseconds(15000));
      throw std::runtime_error("launch did not become ready; stdout:\n" + launch_->out() +
                               "\nstderr:\n" + launch_->err() + "\nnode logs:\n" + logs_text());
    }
    ready_line_ = *line;
    auto at = line->find(" ready after ");
    ready_s_ = std::stod(line->substr(at + 13));
    report_timing("launch ready (as launch reports it)", ready_s_);
    parse_pids();
  }

  process& launcher() { return *launch_; }
  /// The --log-dir of the last start() (empty when it named none).
  const std::string& log_dir() const { return log_dir_; }

  /// Every node log of this launch, each under a header (for failure messages).
  std::string logs_text() const {
    std::string all;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(log_dir_, ec))
      all += "== " + e.path().string() + "\n" + read_file(e.path().string());
    return all;
  }
  const std::string& ready_line() const { return ready_line_; }
  double ready_seconds() const { return ready_s_; }

  /// The pid launch printed for node `name` (checked against /proc before it is used).
  pid_t pid_of(const std::string& name) const {
    auto it = pids_.find(name);
    if (it == pids_.end()) throw std::runtime_error("no pid for node " + name);
    if (!cmdline_has(it->second, "--name " + name) ||
        !cmdline_has(it->second, "--manifest " + manifest_))
      throw std::runtime_error("pid " + std::to_string(it->second) + " is not node " + name);
    return it->second;
  }

  /// `tokenmill status --connect THIS --json`, parsed; null when it failed.
  json status() const {
    auto r = run_tokenmill({"status", "--connect", endpoint(), "--json"}, milliseconds(15000));
    if (r.exit_code != 0) return nullptr;
    return json::parse(r.out, nullptr, false);
  }

  std::vector<std::string> generate_argv(const std::vector<std::string>& args) const {
    std::vector<std::string> argv{tokenmill_bin(), "generate", "--connect", endpoint()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  run_result generate(const std::vector<std::string>& args,
                      milliseconds timeout = milliseconds(30000)) const {
    return run(generate_argv(args), timeout);
  }

  /// SIGTERMs launch and waits (bounded) for it; its exit code, or nothing on timeout.
  std::optional<int> stop(int sig = SIGTERM, milliseconds timeout = milliseconds(15000)) {
    launch_->signal(sig);
    return launch_->wait(timeout);
  }

 private:
  void parse_pids() {
    std::istringstream in(launch_->out());
    for (std::string line; std::getline(in, line);) {
      // "launch: node d0         starting (pid 29049), log ..."
      const std::string head = "launch: node ";
      auto pid_at = line.find("starting (pid ");
      if (line.rfind(head, 0) != 0 || pid_at == std::string::npos) continue;
      std::istringstream words(line.substr(head.size()));
      std::string name;
      words >> name;
      pids_[name] = static_cast<pid_t>(std::stol(line.substr(pid_at + 14)));
    }
  }

  void cleanup() {
    // A stopped node would hold up launch's orderly stop.
    for (pid_t p : node_pids(manifest_))
      ::kill(p, SIGCONT);
    if (launch_ && launch_->running()) {
      launch_->signal(SIGTERM);
      launch_->wait(milliseconds(15000));  // SIGKILLs launch on timeout
    }
    for (int round = 0; round < 2; ++round) {
      for (pid_t p : node_pids(manifest_))
        ::kill(p, SIGKILL);
      if (no_nodes_left(manifest_, milliseconds(2000))) break;
    }
  }

  temp_dir dir_{"tokenmill-multinode"};
  cluster_spec spec_;
  port_plan ports_;
  std::string manifest_;
  std::unique_ptr<process> launch_;
  std::map<std::string, pid_t> pids_;
  std::string log_dir_;
  std::string ready_line_;
  double ready_s_ = -1;
};

/// The worker of `role` on node `node` in `status` (null when there is none).
json worker_on(const json& status, const std::string& role, const std::string& node) {
  if (!status.is_object() || !status.contains("workers")) return nullptr;
  for (const auto& w : status["workers"])
    if (w.value("role", "") == role && w.value("node", "") == node) return w;
  return nullptr;
}

/// True once status reports the worker of `role` on `node` as down.
bool becomes_down(const cluster& c, const std::string& role, const std::string& node, json& last) {
  return eventually(
      [&] {
        last = c.status();
        auto w = worker_on(last, role, node);
        return w.is_object() && !w.value("up", true);
      },
      kFailureBound);
}

const std::string kPrompt = id_prompt(100, 8);
/// Long enough to stream for several seconds at 2 ms per token (8 + 4000 <= 4096 context).
const std::string kLongTokens = "4000";

/// Starts a long streaming generate and waits until tokens flow.
std::unique_ptr<process> start_long_generate(const cluster& c) {
  auto gen = std::make_unique<process>(
      c.generate_argv({"--token-ids", "--max-tokens", kLongTokens, kPrompt}));
  if (!gen->wait_for_output(40, milliseconds(10000)))
    throw std::runtime_error("the long generate did not stream; stdout: " + gen->out() +
                             " stderr: " + gen->err());
  return gen;
}

/// Waits (bounded by the 5 s contract) for a client whose node was just failed; returns
/// the seconds it took, or a negative number when it was still running after 5 s.
double await_client_error(process& gen, steady::time_point failed_at, int& exit_code) {
  auto code = gen.wait(kFailureBound);
  double took = seconds_since(failed_at);
  report_timing("node failure to client exit", took);
  exit_code = code.value_or(-1);
  return code ? took : -1.0;
}

/// Stops launch with `sig` and checks the orderly end: exit 0, every node stopped on its
/// own (launch did not have to SIGKILL one), no node process left.
void stop_cleanly(cluster& c, int sig = SIGTERM) {
  auto rc = c.stop(sig);
  auto logs = c.logs_text();
  INFO("signal " << sig << "; launch stdout: " << c.launcher().out()
                 << "\nstderr: " << c.launcher().err() << "\nnode logs:\n"
                 << logs);
  REQUIRE(rc);
  CHECK(*rc == 0);
  CHECK(c.launcher().out().find("launch: stopped") != std::string::npos);
  CHECK(c.launcher().err().find("did not stop") == std::string::npos);
  // CAF's teardown still hangs now and then; the node bounds it (exits after 3 s).
  if (logs.find("shutdown did not finish") != std::string::npos)
    WARN("a node's shutdown hung and was cut short after 3 s:\n" << logs);
  CHECK(no_nodes_left(c.manifest()));
}

}  // namespace

TEST_CASE("a launched three-node cluster serves like tokenmill serve", "[integration][multinode]") {
  cluster c;
  c.launch();
  INFO("launch: " << c.launcher().out());
  CHECK(c.ready_line().find("tokenmill cluster mn ready after") != std::string::npos);
  CHECK(c.ready_line().find("rpc=127.0.0.1:" + std::to_string(c.ports().rpc)) != std::string::npos);
  CHECK(c.ready_line().find("nodes=3") != std::string::npos);
  for (const char* n : {"head", "p0", "d0"})
    CHECK(c.launcher().out().find(std::string("launch: node ") + n) != std::string::npos);

  SECTION("status lists every worker on its node, all up") {
    auto st = c.status();
    INFO("status: " << st.dump());
    REQUIRE(st.is_object());
    CHECK(st.value("ready", false));
    REQUIRE(st["workers"].size() == 4);
    const std::map<std::string, std::string> want{
        {"kv_store", "head"}, {"router", "head"}, {"prefill", "p0"}, {"decode", "d0"}};
    for (const auto& [role, node] : want) {
      auto w = worker(st, role);
      INFO("role " << role);
      REQUIRE(w.is_object());
      CHECK(w["node"] == node);
      CHECK(w["up"] == true);
    }
  }

  SECTION("generate: token count, stage breakdown, and the same ids as one process") {
    const int n = 24;
    auto r = c.generate({"--json", "--token-ids", "--max-tokens", std::to_string(n), kPrompt});
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.exit_code == 0);
    auto j = last_json_line(r.out);
    REQUIRE(j.is_object());
    CHECK(j["tokens"] == n);
    CHECK(j["finish_reason"] == "length");
    REQUIRE(j["token_ids"].size() == static_cast<size_t>(n));

    // The client's stages add up to its TTFT (within 1 %).
    double sum = 0;
    for (const auto& [name, ms] : j["stages"].items())
      sum += ms.get<double>();
    double ttft = j["ttft_ms"].get<double>();
    CHECK(ttft > 0);
    CHECK(std::abs(sum - ttft) <= 0.01 * ttft);
    CHECK(std::abs(j["stages_sum_ms"].get<double>() - ttft) <= 0.01 * ttft);
    // Prefill ran on p0 and its KV travelled to d0.
    CHECK(j["stages"].contains("prefill_compute"));
    CHECK(j["stages"].contains("kv_transfer"));

    // The same model in one process gives the same ids: the manifest's sim model has
    // the defaults `serve` uses (vocab 32000, seed 0x7e570001), and the timings are
    // matched although greedy ids do not depend on them.
    server single{{"--sim-decode-step-ms", "2"}, {"--sim-prefill-us-per-token", "20"}};
    auto s = single.generate({"--json", "--token-ids", "--max-tokens", std::to_string(n), kPrompt});
    REQUIRE(s.exit_code == 0);
    auto sj = last_json_line(s.out);
    REQUIRE(sj.is_object());
    CHECK(sj["token_ids"] == j["token_ids"]);
  }

  SECTION("every node serves its own workers' metrics") {
    auto r = c.generate({"--max-tokens", "4", "--token-ids", kPrompt});
    REQUIRE(r.exit_code == 0);
    auto scrape = [](uint16_t port) {
      auto h = tokenmill::http_client::connect("127.0.0.1", port, 5);
      REQUIRE(h.ok());
      auto res = (*h)->request("GET", "/metrics", {}, "", {}, 10);
      REQUIRE(res.ok());
      CHECK(res->status == 200);
      return res->body;
    };
    auto d0 = scrape(c.ports().node_http.at("d0"));
    INFO(d0);
    CHECK(d0.find("tokenmill_worker_tokens_total{node=\"d0\",role=\"decode\",worker=\"d0."
                  "decode0\"} ") != std::string::npos);
    CHECK(d0.find("tokenmill_kv_blocks_capacity{node=\"d0\"") != std::string::npos);
    CHECK(d0.find("node=\"p0\"") == std::string::npos);  // only its own workers
    auto p0 = scrape(c.ports().node_http.at("p0"));
    CHECK(
        p0.find("tokenmill_kv_bytes_total{node=\"p0\",role=\"prefill\",worker=\"p0.prefill0\"} ") !=
        std::string::npos);
    // p0's transport wrote the prompt's blocks and counts no stall.
    CHECK(p0.find("tokenmill_kv_transfer_stalls_total{node=\"p0\",transport=") !=
          std::string::npos);
    CHECK(p0.find("tokenmill_kv_transfers_total{node=\"p0\",outcome=\"failed\",transport=") !=
          std::string::npos);
    // The frontend's node serves the request histograms and its own workers.
    auto head = scrape(c.ports().http);
    CHECK(head.find("tokenmill_time_to_first_token_seconds_count{node=\"head\"} 1") !=
          std::string::npos);
    CHECK(head.find("worker=\"d0.decode0\"") == std::string::npos);
  }

  stop_cleanly(c);
}

TEST_CASE("a SIGKILLed decode node fails its stream within 5 s and launch serves on",
          "[integration][multinode]") {
  cluster c;
  c.launch();
  pid_t d0 = c.pid_of("d0");
  auto gen = start_long_generate(c);

  auto killed_at = steady::now();
  REQUIRE(::kill(d0, SIGKILL) == 0);
  int code = 0;
  double took = await_client_error(*gen, killed_at, code);
  INFO("client stdout tail: " << gen->out().substr(gen->out().size() > 80 ? gen->out().size() - 80
                                                                          : 0));
  INFO("client stderr: " << gen->err());
  REQUIRE(took >= 0);  // it ended within 5 s
  CHECK(code != 0);
  CHECK(gen->err().find("tokenmill generate:") != std::string::npos);

  json st;
  CHECK(becomes_down(c, "decode", "d0", st));
  INFO("status: " << st.dump());
  CHECK(worker_on(st, "prefill", "p0")["up"] == true);
  CHECK(worker_on(st, "router", "head")["up"] == true);

  // launch notices the death, says so, and keeps running.
  auto line = c.launcher().wait_for_line("node d0 was killed by signal 9", milliseconds(5000));
  INFO("launch stdout: " << c.launcher().out() << "\nstderr: " << c.launcher().err());
  CHECK(line);
  CHECK(c.launcher().running());

  stop_cleanly(c);
}

TEST_CASE("a SIGSTOPped decode node fails its stream within 5 s", "[integration][multinode]") {
  cluster c;
  c.launch();
  pid_t d0 = c.pid_of("d0");
  auto gen = start_long_generate(c);

  auto stopped_at = steady::now();
  REQUIRE(::kill(d0, SIGSTOP) == 0);
  int code = 0;
  double took = await_client_error(*gen, stopped_at, code);
  INFO("client stderr: " << gen->err());
  REQUIRE(took >= 0);
  CHECK(code != 0);
  CHECK(gen->err().find("tokenmill generate:") != std::string::npos);

  json st;
  CHECK(becomes_down(c, "decode", "d0", st));
  INFO("status: " << st.dump());
  CHECK(worker_on(st, "prefill", "p0")["up"] == true);

  // Woken up again, the node finds itself cut off (it stays down: nothing in flight
  // comes back to life), and launch still stops everything cleanly.
  REQUIRE(::kill(d0, SIGCONT) == 0);
  auto after = c.status();
  INFO("status after SIGCONT: " << after.dump());
  CHECK(worker_on(after, "decode", "d0")["up"] == false);
  CHECK(c.launcher().running());

  stop_cleanly(c);
}

TEST_CASE(
    "with a spare decode node, a stream whose decode node is SIGKILLed continues there "
    "with the tokens of an undisturbed run",
    "[integration][multinode][migration]") {
  cluster_spec spec;
  spec.decode_nodes = {"d0", "d1"};
  cluster c(spec);
  c.launch();
  auto st0 = c.status();
  INFO("status: " << st0.dump());
  REQUIRE(st0.is_object());
  REQUIRE(st0["workers"].size() == 5);

  // Seeded sampling: the tokens depend only on (seed, position), so a run re-prefilled on
  // another worker mid-stream must produce exactly the undisturbed run's tokens.
  const std::vector<std::string> args{"--json",        "--token-ids", "--max-tokens", "1500",
                                      "--temperature", "0.8",         "--seed",       "7",
                                      kPrompt};
  auto ref = c.generate(args, milliseconds(30000));
  INFO("undisturbed run stdout: " << ref.out << "\nstderr: " << ref.err);
  REQUIRE(ref.exit_code == 0);
  auto ref_j = last_json_line(ref.out);
  REQUIRE(ref_j.is_object());
  REQUIRE(ref_j["tokens"] == 1500);

  // Kill whichever decode node runs the stream, once its tokens flow (1500 tokens at 2 ms
  // a step take 3 s or more).
  process gen(c.generate_argv(args));
  std::string victim, spare;
  REQUIRE(eventually(
      [&] {
        auto st = c.status();
        for (const char* n : {"d0", "d1"}) {
          auto w = worker_on(st, "decode", n);
          if (w.is_object() && w.value("running", 0) > 0) victim = n;
        }
        return !victim.empty();
      },
      milliseconds(5000)));
  spare = victim == "d0" ? "d1" : "d0";
  REQUIRE(gen.running());  // mid-stream
  auto killed_at = steady::now();
  REQUIRE(::kill(c.pid_of(victim), SIGKILL) == 0);
  auto code = gen.wait(milliseconds(30000));
  report_timing("kill to the moved stream's end", seconds_since(killed_at));
  INFO("victim " << victim << "; client stderr: " << gen.err());
  REQUIRE(code);
  CHECK(*code == 0);
  auto j = last_json_line(gen.out());
  REQUIRE(j.is_object());
  CHECK(j["tokens"] == 1500);
  CHECK(j["token_ids"] == ref_j["token_ids"]);
  CHECK(j["server"]["migrations"] == 1);
  CHECK(j["server"]["migration_reasons"] == json::array({"worker_lost"}));
  CHECK(j["server"]["decode_worker"].get<std::string>().rfind(spare, 0) == 0);

  json st;
  REQUIRE(becomes_down(c, "decode", victim, st));
  auto before = worker_on(st, "decode", spare);
  REQUIRE(before.is_object());
  CHECK(before["up"] == true);
  // Regression: the cluster still serves, so it is ready (status said NOT ready and /ready
  // answered 503, which takes a serving cluster out of a load balancer's rotation).
  CHECK(st["ready"] == true);
  {
    auto h = tokenmill::http_client::connect("127.0.0.1", c.ports().http, 5);
    REQUIRE(h.ok());
    auto res = (*h)->request("GET", "/ready", {}, "", {}, 10);
    REQUIRE(res.ok());
    CHECK(res->status == 200);
  }

  // New requests go to the spare.
  auto r = c.generate({"--json", "--token-ids", "--max-tokens", "16", kPrompt});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(last_json_line(r.out)["tokens"] == 16);

  stop_cleanly(c);
}

TEST_CASE(
    "a request whose prefill node is SIGKILLed mid-prefill is prefilled again and gives the "
    "tokens of an undisturbed run",
    "[integration][multinode][migration]") {
  // 1000 prompt tokens at 2 ms each: p0 prefills for 2 s, long enough to be killed at it.
  cluster_spec spec;
  spec.prefill_us_per_token = 2000;
  cluster c(spec);
  c.launch();
  const auto prompt = id_prompt(100, 1000);
  const std::vector<std::string> args{"--json",        "--token-ids", "--max-tokens", "32",
                                      "--temperature", "0.8",         "--seed",       "11",
                                      prompt};
  // The reference from one undisturbed process (the sim engine's tokens do not depend on
  // its timings); the cluster's own prefix cache would otherwise skip the prefill.
  server single{{"--sim-decode-step-ms", "2"}, {"--sim-prefill-us-per-token", "20"}};
  auto ref = single.generate(args);
  REQUIRE(ref.exit_code == 0);
  auto ref_j = last_json_line(ref.out);
  REQUIRE(ref_j.is_object());

  process gen(c.generate_argv(args));
  REQUIRE(eventually(
      [&] {
        auto w = worker_on(c.status(), "prefill", "p0");
        return w.is_object() && (w.value("running", 0) > 0 || w.value("queued", 0) > 0);
      },
      milliseconds(5000)));
  REQUIRE(::kill(c.pid_of("p0"), SIGKILL) == 0);
  auto code = gen.wait(milliseconds(30000));
  INFO("client stdout: " << gen.out() << "\nstderr: " << gen.err());
  REQUIRE(code);
  CHECK(*code == 0);
  auto j = last_json_line(gen.out());
  REQUIRE(j.is_object());
  CHECK(j["token_ids"] == ref_j["token_ids"]);
  CHECK(j["server"]["migrations"] == 1);
  CHECK(j["server"]["migration_reasons"] == json::array({"prefill_lost"}));
  CHECK(j["server"]["prefill_worker"] == "");  // prefilled on the decode worker
  // Nothing stays reserved on the decode worker for the dead prefill's job.
  CHECK(eventually(
      [&] {
        auto w = worker_on(c.status(), "decode", "d0");
        return w.is_object() && w.value("kv_used", -1) == 0 && w.value("running", -1) == 0;
      },
      milliseconds(10000)));
  stop_cleanly(c);
}

TEST_CASE("a node started with a different manifest is refused", "[integration][multinode]") {
  // Two decode nodes, so that one can be killed (freeing its port for the intruder) while
  // the cluster still serves.
  cluster_spec spec;
  spec.decode_nodes = {"d0", "d1"};
  cluster c(spec);
  c.launch();
  REQUIRE(::kill(c.pid_of("d1"), SIGKILL) == 0);
  json st;
  REQUIRE(becomes_down(c, "decode", "d1", st));

  // Same cluster, node names and ports; only the decode step differs.
  cluster_spec changed = spec;
  changed.decode_step_ms = 3;
  const std::string other = c.dir() + "/changed.yaml";
  write_file(other, manifest_yaml(changed, c.ports()));
  {
    process intruder(
        {tokenmill_bin(), "node", "--manifest", other, "--name", "d1", "--join-timeout", "10"});
    auto code = intruder.wait(milliseconds(15000));
    INFO("intruder stdout: " << intruder.out() << "\nstderr: " << intruder.err());
    REQUIRE(code);
    CHECK(*code != 0);
    CHECK(intruder.out().find("tokenmill node ready") == std::string::npos);
    CHECK(intruder.err().find("manifest") != std::string::npos);
  }

  // The cluster is as it was: d1 still down (the intruder registered nothing), and
  // requests are served.
  auto after = c.status();
  INFO("status: " << after.dump());
  REQUIRE(after.is_object());
  CHECK(after["workers"].size() == 5);
  CHECK(worker_on(after, "decode", "d1")["up"] == false);
  CHECK(worker_on(after, "decode", "d0")["up"] == true);
  auto r = c.generate({"--json", "--token-ids", "--max-tokens", "8", kPrompt});
  INFO("generate stderr: " << r.err);
  CHECK(r.exit_code == 0);
  CHECK(c.launcher().running());

  stop_cleanly(c);
}

TEST_CASE("launch with a node that cannot start fails and leaves no node behind",
          "[integration][multinode]") {
  SECTION("a control port in use: refused up front, naming the node and port") {
    cluster c;
    // Hold p0's control port the way another program would.
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(c.ports().node.at("p0"));
    bool held = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd, 4) == 0;
    auto& l = c.start({"--log-dir", c.dir() + "/logs"});
    auto code = l.wait(milliseconds(20000));
    ::close(fd);
    REQUIRE(held);
    INFO("launch stdout: " << l.out() << "\nstderr: " << l.err());
    REQUIRE(code);
    CHECK(*code != 0);
    CHECK(l.err().find("'p0'") != std::string::npos);
    CHECK(l.err().find(std::to_string(c.ports().node.at("p0"))) != std::string::npos);
    CHECK(l.out().find("starting") == std::string::npos);  // no node was started
    CHECK(no_nodes_left(c.manifest()));
  }

  SECTION("a node that exits before it is ready: its name and log tail") {
    // The head node cannot bind its RPC frontend on an address this machine does not
    // have (TEST-NET-1), so it exits at startup; manifest checks only probe local ports.
    cluster_spec spec;
    spec.frontend_host = "192.0.2.1";
    cluster c(spec);
    auto& l = c.start({"--log-dir", c.dir() + "/logs"});
    auto code = l.wait(milliseconds(30000));
    INFO("launch stdout: " << l.out() << "\nstderr: " << l.err());
    REQUIRE(code);
    CHECK(*code != 0);
    CHECK(l.err().find("node head exited") != std::string::npos);
    CHECK(l.err().find("before it was ready") != std::string::npos);
    CHECK(l.err().find("last lines of") != std::string::npos);
    CHECK(l.err().find("cannot listen on 192.0.2.1") != std::string::npos);  // the log tail
    CHECK(l.out().find(" ready after ") == std::string::npos);
    CHECK(no_nodes_left(c.manifest()));
  }
}

TEST_CASE("SIGTERM or SIGINT to launch stops every node and exits 0", "[integration][multinode]") {
  int sig = GENERATE(SIGTERM, SIGINT);
  cluster c;
  c.launch();
  REQUIRE(node_pids(c.manifest()).size() == 3);
  stop_cleanly(c, sig);
}

// Regression (found by this file, fixed in 55de59a): `tokenmill node` blocked SIGINT and
// SIGTERM before cluster_node::start and took them only once start returned, so a node
// still looking for its supervisor ignored them until --join-timeout (30 s) passed, and
// launch's failure path had to wait 5 s and SIGKILL such nodes.
TEST_CASE("a node still waiting for its supervisor stops on SIGTERM", "[integration][multinode]") {
  cluster c;  // never launched: p0's supervisor (head) is not there
  process p0({tokenmill_bin(), "node", "--manifest", c.manifest(), "--name", "p0", "--join-timeout",
              "20"});
  // It listens on its control port before it tries to join.
  auto port = c.ports().node.at("p0");
  REQUIRE(eventually(
      [&] {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        ::close(fd);
        return ok;
      },
      milliseconds(10000)));
  p0.signal(SIGTERM);
  auto code = p0.wait(milliseconds(3000));
  INFO("stdout: " << p0.out() << "\nstderr: " << p0.err());
  CHECK(code);
}

// Regression (found by this file, fixed in 55de59a by truncating logs): launch took
// "tokenmill node ready" anywhere in a node's log (opened O_APPEND) as that node's ready
// line, so with a --log-dir reused from an earlier run every node counted as joined at
// once, and a node that then failed at startup was never reported: launch waited out
// --ready-timeout and said only "the cluster did not report ready".
TEST_CASE("a reused log folder does not hide a node that fails to start",
          "[integration][multinode]") {
  cluster good;
  good.launch();
  REQUIRE(good.stop() == 0);
  const std::string logs = good.log_dir();

  // p0 on an address this machine does not have cannot listen (launch starts a node
  // without ssh: locally), so it exits at startup.
  cluster_spec spec;
  spec.p0_address = "192.0.2.1";
  cluster bad(spec);
  auto& l = bad.start({"--log-dir", logs, "--ready-timeout", "3"});
  auto code = l.wait(milliseconds(20000));
  INFO("launch stdout: " << l.out() << "\nstderr: " << l.err());
  REQUIRE(code);
  CHECK(*code != 0);
  CHECK_FALSE(has_line(l.out(), {"node p0 ", "joined"}));
  CHECK(l.err().find("node p0 exited") != std::string::npos);
  CHECK(l.err().find("cannot listen") != std::string::npos);
  CHECK(no_nodes_left(bad.manifest()));
}

// Regression for two intermittent bugs found by this file (fixed in 55de59a), each seen
// about once in 150-250 launches of a 4-node cluster on 2 busy cores:
//
// 1. Join race: a worker node's join_node request landed on the head's node_agent
//    instead of its supervisor; the node exited 1 with "join failed:
//    system_error(unexpected_message)" and the head logged "*** unexpected message [id:
//    6, name: node_agent]: (join_node(...))". The head published its agent before the
//    supervisor existed. Now the supervisor is spawned first.
// 2. Shutdown hang: a worker node that printed "SIGTERM received, shutting down" never
//    exited, and launch SIGKILLed it after 10 s. Its main thread waited in
//    caf::actor_system::~actor_system -> await_detached_threads while a detached thread
//    waited in caf::detail::private_thread::await_self_destroyed. Now a stopping node
//    exits after at most 3 s (the CAF hang itself remains; stop_cleanly warns on it).
TEST_CASE("every launch succeeds and every node stops on its own", "[integration][multinode]") {
  for (int round = 0; round < 6; ++round) {
    cluster_spec spec;
    spec.decode_nodes = {"d0", "d1"};
    cluster c(spec);
    auto& l = c.start({"--log-dir", c.dir() + "/logs"});
    auto ready = l.wait_for_line(" ready after ", kReadyTimeout);
    INFO("round " << round << "; launch stdout: " << l.out() << "\nstderr: " << l.err());
    CHECK(ready);
    if (!ready) continue;
    auto r = c.generate({"--token-ids", "--max-tokens", "8", kPrompt});
    CHECK(r.exit_code == 0);
    stop_cleanly(c);
  }
}

TEST_CASE("KV blocks cross between node processes over UCX (shared memory and tcp)",
          "[integration][multinode][ucx]") {
  for (const char* tls : {"", "tcp"}) {
    // The node processes inherit the environment: UCX_TLS=tcp forces the tcp transport
    // (its RMA is emulated, so the decode node's progress thread must serve it).
    if (*tls)
      ::setenv("UCX_TLS", tls, 1);
    else
      ::unsetenv("UCX_TLS");
    INFO("UCX_TLS=" << (*tls ? tls : "(default)"));
    cluster_spec spec;
    spec.kv_transport = "ucx";
    cluster c(spec);
    c.launch();
    // 40 prompt tokens: three blocks. The decode node checks every block's checksum and
    // (sim engine) its contents, so a block that did not arrive fails the request.
    const int n = 12;
    const auto prompt = id_prompt(100, 40);
    auto r = c.generate({"--json", "--token-ids", "--max-tokens", std::to_string(n), prompt});
    INFO("stdout: " << r.out << "\nstderr: " << r.err << "\nlogs: " << c.logs_text());
    REQUIRE(r.exit_code == 0);
    auto j = last_json_line(r.out);
    REQUIRE(j.is_object());
    CHECK(j["tokens"] == n);
    CHECK(j["stages"].contains("kv_transfer"));
    auto st = c.status();
    CHECK_THAT(worker(st, "decode")["detail"].get<std::string>(), Catch::Contains("transport ucx"));
    CHECK(eventually([&] { return workers_idle(c.status()); }, milliseconds(5000)));
    // The same ids as one process with the inline transport.
    server single{{"--sim-decode-step-ms", "2"}, {"--sim-prefill-us-per-token", "20"}};
    auto s = single.generate({"--json", "--token-ids", "--max-tokens", std::to_string(n), prompt});
    REQUIRE(s.exit_code == 0);
    CHECK(last_json_line(s.out)["token_ids"] == j["token_ids"]);
    stop_cleanly(c);
  }
  ::unsetenv("UCX_TLS");
}

// The nodes share a host, so their endpoints have no peer error handling (shared memory):
// the decode node learns of the death from the cluster's heartbeats. Between hosts (peer
// error handling on), Debian's UCX 1.13.1, built with assertions, can abort the surviving
// node in ucp_request_send_state_ff "Assertion ... got REP message" while it purges a
// wire-up message (removed upstream, openucx/ucx#8175); that path has no test here, since
// one host cannot give it (UCX_TLS=tcp still counts as the same host).
TEST_CASE("a prefill node killed while KV moves over UCX leaves no decode block reserved",
          "[integration][multinode][ucx][ucx-peer-death]") {
  cluster_spec spec;
  spec.kv_transport = "ucx";
  cluster c(spec);
  c.launch();
  pid_t p0 = c.pid_of("p0");
  // Four 1500-token prompts: 94 blocks each, prefilled in 512-token chunks whose blocks are
  // put into d0's pool as each chunk completes.
  std::vector<std::unique_ptr<process>> gens;
  for (int i = 0; i < 4; ++i)
    gens.push_back(std::make_unique<process>(
        c.generate_argv({"--token-ids", "--max-tokens", "4", id_prompt(100 + 7 * i, 1500)})));
  std::this_thread::sleep_for(milliseconds(40));
  REQUIRE(::kill(p0, SIGKILL) == 0);
  for (auto& g : gens) {
    auto rc = g->wait(milliseconds(15000));
    INFO("client stderr: " << g->err());
    CHECK(rc.has_value());  // every client ends: with its tokens, or with an error
  }
  json st;
  CHECK(becomes_down(c, "prefill", "p0", st));
  // Every block d0 reserved for the dead prefill's transfers is free again.
  CHECK(eventually(
      [&] {
        auto w = worker_on(c.status(), "decode", "d0");
        return w.is_object() && w.value("kv_used", -1) == 0 && w.value("running", -1) == 0 &&
               w.value("queued", -1) == 0;
      },
      milliseconds(10000)));
  INFO("status: " << c.status().dump() << "\nnode logs:\n" << c.logs_text());
  CHECK(worker_on(c.status(), "decode", "d0")["up"] == true);
  stop_cleanly(c);
}

namespace {

/// The TCP ports `pid` listens on, from its socket inodes and /proc/net/tcp{,6}.
std::set<uint16_t> listening_ports(pid_t pid) {
  std::set<std::string> inodes;
  std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(fd_dir, ec)) {
    auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.rfind("socket:[", 0) == 0) inodes.insert(target.substr(8, target.size() - 9));
  }
  std::set<uint16_t> ports;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream in(read_file(table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      std::istringstream f(line);
      std::string sl, local, remote, state, txrx, trwhen, retr, uid, timeout, inode;
      f >> sl >> local >> remote >> state >> txrx >> trwhen >> retr >> uid >> timeout >> inode;
      if (state != "0A" || !inodes.count(inode)) continue;  // 0A: LISTEN
      ports.insert(
          static_cast<uint16_t>(std::stoul(local.substr(local.rfind(':') + 1), nullptr, 16)));
    }
  }
  return ports;
}

/// Opens `connections` connections to 127.0.0.1:port, each sending 1 B to 64 KiB of
/// random bytes, then closes them.
void throw_garbage(uint16_t port, int connections, std::mt19937& rng) {
  for (int k = 0; k < connections; ++k) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
      timeval tv{1, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      std::vector<uint8_t> junk(1 + rng() % (64 << 10));
      for (auto& b : junk)
        b = static_cast<uint8_t>(rng());
      (void)!::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
    }
    ::close(fd);
  }
}

}  // namespace

// Regression: twenty connections of random bytes to the head node's control port made
// every other node lose the supervisor and exit (CAF sized its buffers to the garbage's
// length field); the same to a worker's port made that worker exit.
TEST_CASE("random bytes on every listening port of a cluster cost only their connections",
          "[integration][multinode][garbage]") {
  cluster_spec spec;
  spec.decode_nodes = {"d0", "d1"};
  spec.kv_transport = "ucx";
  cluster c(spec);
  c.launch();
  std::map<std::string, pid_t> pids;
  for (const char* n : {"head", "p0", "d0", "d1"})
    pids[n] = c.pid_of(n);
  std::mt19937 rng(1234);
  std::set<uint16_t> hit;
  for (const auto& [name, pid] : pids) {
    auto ports = listening_ports(pid);
    INFO("node " << name);
    CHECK(ports.count(c.ports().node.at(name)) == 1);  // the control port is among them
    for (auto port : ports) {
      throw_garbage(port, 20, rng);
      hit.insert(port);
    }
  }
  INFO("ports hit: " << hit.size() << "\nlaunch stdout: " << c.launcher().out() << "\nnode logs:\n"
                     << c.logs_text());
  CHECK(hit.size() >= 4 + 1 + 3);  // 4 control ports, the HTTP port, 3 metrics ports at least
  // Every node is still there, every worker up, and the cluster serves.
  std::this_thread::sleep_for(milliseconds(1500));  // > the failure detector's 500 ms
  for (const auto& [name, pid] : pids)
    CHECK(::kill(pid, 0) == 0);
  auto st = c.status();
  REQUIRE(st.is_object());
  CHECK(st["ready"] == true);
  for (const auto& w : st["workers"])
    CHECK(w.value("up", false));
  auto r = c.generate({"--json", "--token-ids", "--max-tokens", "8", id_prompt(100, 40)});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(last_json_line(r.out)["tokens"] == 8);
  stop_cleanly(c);
}

// ------------------------------------------------------------------ restarts (issue 14)

namespace {

/// The entry of node `name` in `status["nodes"]` (null when there is none).
json node_entry(const json& status, const std::string& name) {
  if (!status.is_object() || !status.contains("nodes")) return nullptr;
  for (const auto& n : status["nodes"])
    if (n.value("name", "") == name) return n;
  return nullptr;
}

/// The pid in launch's last "node NAME restarting (pid N, ...)" line, or -1.
pid_t restarted_pid(const std::string& launch_out, const std::string& name) {
  pid_t pid = -1;
  std::istringstream in(launch_out);
  const std::string head = "launch: node " + name + " restarting (pid ";
  for (std::string line; std::getline(in, line);)
    if (line.rfind(head, 0) == 0) pid = static_cast<pid_t>(std::stol(line.substr(head.size())));
  return pid;
}

/// Waits until status shows node `name` up after `restarts` restarts, its decode worker up
/// and the cluster ready.
bool back_up(const cluster& c, const std::string& name, int restarts, json& st) {
  return eventually(
      [&] {
        st = c.status();
        auto n = node_entry(st, name);
        auto w = worker_on(st, "decode", name);
        return n.is_object() && n.value("up", false) && n.value("restarts", -1) == restarts &&
               w.is_object() && w.value("up", false) && st.value("ready", false);
      },
      milliseconds(10000));
}

}  // namespace

TEST_CASE("a SIGKILLed decode node is restarted, rejoins and serves again",
          "[integration][multinode][restart]") {
  cluster_spec spec;
  spec.restart = "{max: 2, backoff_ms: 50}";
  cluster c(spec);
  c.launch();
  pid_t d0 = c.pid_of("d0");
  REQUIRE(::kill(d0, SIGKILL) == 0);
  auto& l = c.launcher();
  auto restarts =
      l.wait_for_line("launch: node d0 restarts in 50 ms (restart 1 of 2)", milliseconds(5000));
  auto rejoined = l.wait_for_line("launch: node d0 rejoined", kReadyTimeout);
  INFO("launch stdout: " << l.out() << "\nstderr: " << l.err() << "\nnode logs:\n"
                         << c.logs_text());
  CHECK(l.out().find("node d0 was killed by signal 9") != std::string::npos);
  REQUIRE(restarts);
  REQUIRE(rejoined);
  pid_t again = restarted_pid(l.out(), "d0");
  CHECK(again > 0);
  CHECK(again != d0);
  CHECK(cmdline_has(again, "--name d0"));

  // The supervisor counts the second join of d0 as a restart; nothing else restarted.
  json st;
  CHECK(back_up(c, "d0", 1, st));
  INFO("status: " << st.dump());
  CHECK(node_entry(st, "head")["restarts"] == 0);
  CHECK(node_entry(st, "p0")["restarts"] == 0);
  auto text = run_tokenmill({"status", "--connect", c.endpoint()}, milliseconds(15000));
  INFO("status text: " << text.out);
  CHECK(has_line(text.out, {"restarts", "clock offset ms"}));
  bool d0_row = false;
  std::istringstream rows(text.out);
  for (std::string row; std::getline(rows, row);) {
    std::istringstream words(row);
    std::string name, index, state, count;
    words >> name >> index >> state >> count;
    if (name == "d0") d0_row = state == "up" && count == "1";
  }
  CHECK(d0_row);

  // The router routes to the new process: prefill on p0, decode on the restarted d0.
  auto r = c.generate({"--json", "--token-ids", "--max-tokens", "8", kPrompt});
  INFO("generate stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  auto j = last_json_line(r.out);
  REQUIRE(j.is_object());
  CHECK(j["tokens"] == 8);
  CHECK(j["stages"].contains("kv_transfer"));
  CHECK(worker_on(c.status(), "decode", "d0")["completed"] == 1);
  CHECK(node_pids(c.manifest()).size() == 3);
  stop_cleanly(c);
}

TEST_CASE("with restart: {max: 0} a SIGKILLed node stays down and launch says so",
          "[integration][multinode][restart]") {
  cluster_spec spec;
  spec.restart = "{max: 0}";
  cluster c(spec);
  c.launch();
  REQUIRE(::kill(c.pid_of("d0"), SIGKILL) == 0);
  auto& l = c.launcher();
  auto line = l.wait_for_line("launch: node d0 stays down: restarts are off", milliseconds(5000));
  INFO("launch stdout: " << l.out() << "\nstderr: " << l.err());
  REQUIRE(line);
  json st;
  CHECK(becomes_down(c, "decode", "d0", st));
  INFO("status: " << st.dump());
  auto n = node_entry(st, "d0");
  REQUIRE(n.is_object());
  CHECK(n["up"] == false);
  CHECK(n["restarts"] == 0);
  CHECK(l.out().find("restarting") == std::string::npos);
  CHECK(node_pids(c.manifest()).size() == 2);
  CHECK(l.running());
  stop_cleanly(c);
}

TEST_CASE("launch gives up on a node that dies more than restart.max times in a row",
          "[integration][multinode][restart]") {
  cluster_spec spec;
  spec.restart = "{max: 1, backoff_ms: 50}";
  cluster c(spec);
  c.launch();
  REQUIRE(::kill(c.pid_of("d0"), SIGKILL) == 0);
  auto& l = c.launcher();
  auto rejoined = l.wait_for_line("launch: node d0 rejoined", kReadyTimeout);
  INFO("launch stdout: " << l.out() << "\nstderr: " << l.err());
  REQUIRE(rejoined);
  pid_t again = restarted_pid(l.out(), "d0");
  REQUIRE(again > 0);
  REQUIRE(cmdline_has(again, "--name d0"));
  REQUIRE(::kill(again, SIGKILL) == 0);
  auto gave_up =
      l.wait_for_line("launch: node d0 died 2 times in a row; giving up on it", milliseconds(5000));
  CHECK(gave_up);
  json st;
  CHECK(becomes_down(c, "decode", "d0", st));
  INFO("status: " << st.dump());
  CHECK(node_entry(st, "d0")["restarts"] == 1);
  CHECK(l.running());  // the rest of the cluster serves on
  stop_cleanly(c);
}

TEST_CASE("when the supervisor's node dies, launch stops the cluster instead of restarting",
          "[integration][multinode][restart]") {
  cluster_spec spec;
  spec.restart = "{max: 5, backoff_ms: 50}";
  cluster c(spec);
  c.launch();
  REQUIRE(::kill(c.pid_of("head"), SIGKILL) == 0);
  auto& l = c.launcher();
  auto code = l.wait(milliseconds(20000));
  INFO("launch stdout: " << l.out() << "\nstderr: " << l.err());
  REQUIRE(code);
  CHECK(*code == 1);
  CHECK(l.out().find("launch: node head ran the supervisor") != std::string::npos);
  CHECK(l.out().find("launch: the cluster is down") != std::string::npos);
  CHECK(l.out().find("restarting") == std::string::npos);
  CHECK(no_nodes_left(c.manifest()));
}

TEST_CASE("tokenmill drain refuses a node the cluster does not have", "[integration][drain]") {
  cluster c;
  c.launch();
  auto bad = run_tokenmill({"drain", "--connect", c.endpoint(), "nope"}, milliseconds(15000));
  INFO("stdout: " << bad.out << "\nstderr: " << bad.err);
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("tokenmill drain: invalid_request: no node named 'nope' in cluster mn") !=
        std::string::npos);
  CHECK(bad.err.find("d0, head, p0") != std::string::npos);  // the nodes it has
  // A node without prefill or decode workers has nothing to drain (and nothing changes).
  auto head = run_tokenmill({"drain", "--connect", c.endpoint(), "head"}, milliseconds(15000));
  INFO("stdout: " << head.out << "\nstderr: " << head.err);
  CHECK(head.exit_code == 0);
  CHECK(head.out.find("node head runs no prefill or decode worker: nothing to drain") !=
        std::string::npos);
  auto r = c.generate({"--json", "--token-ids", "--max-tokens", "8", kPrompt});
  CHECK(r.exit_code == 0);
  stop_cleanly(c);
}

// Needs the supervisor's side of issue 15 (drain_request: mark the node's workers
// draining, broadcast, change_role{drain_only} to each, answer drain_report from their
// role_changed): without it the drain fails with "unavailable".
TEST_CASE("tokenmill drain empties a decode node while a stream runs, failing no request",
          "[integration][drain]") {
  cluster_spec spec;
  spec.decode_nodes = {"d0", "d1"};
  cluster c(spec);
  c.launch();
  // A stream that runs ~3 s (1500 tokens at 2 ms per step): still running when the drain
  // starts, so its decode worker moves it live (with its KV) to the other decode node.
  const int n = 1500;
  process gen(
      c.generate_argv({"--json", "--token-ids", "--max-tokens", std::to_string(n), kPrompt}));
  std::string busy;
  REQUIRE(eventually(
      [&] {
        auto st = c.status();
        for (const char* node : {"d0", "d1"}) {
          auto w = worker_on(st, "decode", node);
          if (w.is_object() && w.value("running", 0) > 0) busy = node;
        }
        return !busy.empty();
      },
      milliseconds(10000)));
  const std::string idle = busy == "d0" ? "d1" : "d0";

  auto d = run_tokenmill({"drain", "--connect", c.endpoint(), busy, "--json"}, milliseconds(60000));
  INFO("drain stdout: " << d.out << "\nstderr: " << d.err << "\nnode logs:\n" << c.logs_text());
  REQUIRE(d.exit_code == 0);
  auto rep = last_json_line(d.out);
  REQUIRE(rep.is_object());
  CHECK(rep["node"] == busy);
  REQUIRE(rep["workers"].size() == 1);
  CHECK(rep["workers"][0]["role"] == "decode");
  CHECK(rep["workers"][0]["error"] == "");
  CHECK(rep["workers"][0]["migrated"] == 1);
  CHECK(rep["workers"][0]["finished"] == 0);

  // The stream completed, every token delivered once.
  auto code = gen.wait(milliseconds(20000));
  INFO("generate stdout: " << gen.out() << "\nstderr: " << gen.err());
  REQUIRE(code);
  CHECK(*code == 0);
  auto j = last_json_line(gen.out());
  REQUIRE(j.is_object());
  CHECK(j["tokens"] == n);
  CHECK(j["finish_reason"] == "length");
  CHECK(j["token_ids"].size() == static_cast<size_t>(n));
  // It went on at the other node without recompute, and its tokens are those of an
  // undisturbed run of the same prompt.
  CHECK(j["server"]["decode_worker"].get<std::string>() ==
        worker_on(c.status(), "decode", idle)["name"].get<std::string>());
  CHECK(j["server"]["migration_reasons"] == json::array({"live_migration"}));
  auto again = c.generate({"--json", "--token-ids", "--max-tokens", std::to_string(n), kPrompt},
                          milliseconds(30000));
  REQUIRE(again.exit_code == 0);
  CHECK(last_json_line(again.out)["token_ids"] == j["token_ids"]);

  // The drained worker is up, empty and shown draining; new requests go to the other node.
  auto st = c.status();
  INFO("status: " << st.dump());
  auto w = worker_on(st, "decode", busy);
  CHECK(w["up"] == true);
  CHECK(w["running"] == 0);
  CHECK(w["kv_used"] == 0);
  CHECK(w["detail"].get<std::string>().find("draining") != std::string::npos);
  for (int i = 0; i < 3; ++i) {
    auto r = c.generate({"--json", "--token-ids", "--max-tokens", "8", kPrompt});
    INFO("generate stderr: " << r.err);
    REQUIRE(r.exit_code == 0);
    auto s = last_json_line(r.out);
    CHECK(s["server"]["decode_worker"].get<std::string>() ==
          worker_on(st, "decode", idle)["name"].get<std::string>());
  }

  // Maintenance over: --resume takes the drained worker back into routing.
  auto back = run_tokenmill({"drain", "--connect", c.endpoint(), busy, "--resume", "--json"},
                            milliseconds(30000));
  INFO("resume stdout: " << back.out << "\nstderr: " << back.err);
  REQUIRE(back.exit_code == 0);
  auto br = last_json_line(back.out);
  CHECK(br["action"] == "resume");
  REQUIRE(br["workers"].size() == 1);
  CHECK(br["workers"][0]["error"] == "");
  REQUIRE(eventually(
      [&] {
        auto w2 = worker_on(c.status(), "decode", busy);
        return w2.is_object() && w2["up"] == true &&
               w2["detail"].get<std::string>().find("draining") == std::string::npos;
      },
      milliseconds(10000)));
  // Nothing is drained any more: a second resume says so.
  auto again2 = run_tokenmill({"drain", "--connect", c.endpoint(), busy, "--resume"});
  CHECK(again2.exit_code != 0);
  CHECK_THAT(again2.err, Catch::Contains("no drained worker to resume"));
  auto after = c.generate({"--json", "--token-ids", "--max-tokens", "8", kPrompt});
  CHECK(after.exit_code == 0);
  stop_cleanly(c);
}

namespace {

/// A random-weight model of `preset` (`tokenmill make-model`, f32) in `dir`; its path.
std::string make_model(const temp_dir& dir, const std::string& preset) {
  const auto path = dir.file(preset + ".gguf");
  auto mk = run_tokenmill({"make-model", "--preset", preset, "--dtype", "f32", "-o", path});
  if (mk.exit_code != 0) throw std::runtime_error("make-model failed: " + mk.err);
  return path;
}

/// One choice of a streamed chat completion as the client saw it.
struct streamed_choice {
  std::string content;
  /// Every token, in order, from the stream's logprobs: its text and log-probability.
  std::vector<std::pair<std::string, double>> tokens;
  std::string finish_reason;
};

/// A streamed chat completion: its choices by index, the usage chunk, and whether [DONE]
/// ended it.
struct streamed_chat {
  std::map<int, streamed_choice> choices;
  json usage;
  bool done = false;
  std::string error;  ///< the HTTP error, an error event, or an unparsable event
};

/// POSTs `body` (with stream, logprobs and usage turned on) to /v1/chat/completions on
/// `port` and collects the stream; `events` counts the content chunks as they arrive.
streamed_chat stream_chat(uint16_t port, nlohmann::ordered_json body,
                          std::atomic<int>* events = nullptr) {
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  body["logprobs"] = true;
  streamed_chat out;
  auto c = tokenmill::http_client::connect("127.0.0.1", port, 5);
  if (!c) {
    out.error = c.error().message;
    return out;
  }
  auto r = (*c)->post_sse(
      "/v1/chat/completions", body.dump(),
      [&](std::string_view data, int64_t) {
        if (data == "[DONE]") {
          out.done = true;
          return;
        }
        auto j = json::parse(data, nullptr, false);
        if (!j.is_object() || j.contains("error")) {
          out.error += std::string(data) + "\n";
          return;
        }
        if (j["usage"].is_object()) out.usage = j["usage"];
        for (const auto& ch : j["choices"]) {
          auto& mine = out.choices[ch["index"].get<int>()];
          mine.content += ch["delta"].value("content", "");
          if (ch["finish_reason"].is_string()) mine.finish_reason = ch["finish_reason"];
          if (ch["logprobs"].is_object())
            for (const auto& t : ch["logprobs"]["content"])
              mine.tokens.emplace_back(t["token"].get<std::string>(), t["logprob"].get<double>());
        }
        if (events) ++*events;
      },
      120);
  if (!r)
    out.error += r.error().message;
  else if (r->status != 200)
    out.error += "status " + std::to_string(r->status) + ": " + r->body;
  return out;
}

/// The sequences the decode worker of the node whose /metrics is on `port` runs, from its
/// tokenmill_worker_running gauge; -1 when it cannot be read.
int decode_running(uint16_t port) {
  auto c = tokenmill::http_client::connect("127.0.0.1", port, 5);
  if (!c) return -1;
  auto r = (*c)->request("GET", "/metrics", {}, {}, {}, 5);
  if (!r || r->status != 200) return -1;
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("tokenmill_worker_running{", 0) == 0 &&
        line.find("role=\"decode\"") != std::string::npos)
      return static_cast<int>(std::stod(line.substr(line.rfind(' ') + 1)));
  return -1;
}

/// True when `text` is the JSON the colours schema below asks for: `words` holds exactly
/// `count` of the four colours, `note` a string of at most 8 characters, nothing else.
bool fits_colours(const std::string& text, size_t count) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object() || j.size() != 2 || !j["words"].is_array() || !j["note"].is_string())
    return false;
  if (j["words"].size() != count) return false;
  for (const auto& w : j["words"])
    if (w != "red" && w != "green" && w != "blue" && w != "cyan") return false;
  // maxLength counts characters (code points), not bytes.
  size_t chars = 0;
  for (unsigned char b : j["note"].get<std::string>())
    chars += (b & 0xC0) != 0x80;
  return chars <= 8;
}

}  // namespace

// Issue 23, item 6: the state of penalties, a grammar and n sequences moves with a live
// migration. A random-weight model only makes valid JSON under the grammar mask, and with
// penalties, a seed and temperature 1 every token depends on the whole history: a grammar
// state or penalty history rebuilt wrongly at the target changes the output.
TEST_CASE("a constrained, penalised, seeded n = 2 chat stream moved by a drain is unchanged",
          "[integration][drain][structured]") {
  // The small preset: a decode step takes milliseconds, so that the stream (about 1300
  // tokens a sequence) still runs when the drain comes.
  temp_dir models("tokenmill-drain-model");
  const auto model = make_model(models, "small");
  cluster_spec spec;
  spec.name = "drain-structured";
  spec.decode_nodes = {"d0", "d1"};
  spec.model_path = model;
  cluster c(spec);
  c.launch();

  const size_t words = 200;
  const auto schema = nlohmann::ordered_json::parse(R"({
    "type": "object",
    "properties": {
      "words": {"type": "array", "items": {"enum": ["red", "green", "blue", "cyan"]},
                "minItems": 200, "maxItems": 200},
      "note": {"type": "string", "maxLength": 8}
    },
    "required": ["words", "note"],
    "additionalProperties": false
  })");
  const nlohmann::ordered_json body = {
      {"messages", {{{"role", "user"}, {"content", "List colours as JSON."}}}},
      {"max_tokens", 1900},
      {"temperature", 1.0},
      {"seed", 7},
      {"n", 2},
      {"frequency_penalty", 0.5},
      {"presence_penalty", 0.3},
      {"response_format",
       {{"type", "json_schema"},
        {"json_schema", {{"name", "colours"}, {"strict", true}, {"schema", schema}}}}}};

  // The reference: the same request on the cluster undisturbed.
  const auto ref = stream_chat(c.ports().http, body);
  INFO("reference error: " << ref.error);
  REQUIRE(ref.error.empty());
  REQUIRE(ref.done);
  REQUIRE(ref.choices.size() == 2);
  for (const auto& [index, ch] : ref.choices) {
    INFO("reference choice " << index << ": " << ch.content);
    CHECK(ch.finish_reason == "stop");
    CHECK(fits_colours(ch.content, words));
    CHECK(ch.tokens.size() > words);  // each word is several tokens
  }
  CHECK(ref.choices.at(0).content != ref.choices.at(1).content);  // seeds 7 and 8

  // The same request again, its decode node drained while both sequences stream.
  std::atomic<int> events{0};
  streamed_chat moved;
  std::thread client([&] { moved = stream_chat(c.ports().http, body, &events); });
  struct joiner {
    std::thread& t;
    ~joiner() {
      if (t.joinable()) t.join();
    }
  } join_client{client};
  REQUIRE(eventually([&] { return events.load() >= 20; }, milliseconds(20000)));
  // Which node decodes is read from the nodes' /metrics (an HTTP call, where `tokenmill
  // status` would start a process, which can take seconds on a loaded machine).
  std::string busy;
  REQUIRE(eventually(
      [&] {
        for (const char* node : {"d0", "d1"})
          if (decode_running(c.ports().node_http.at(node)) > 0) busy = node;
        return !busy.empty();
      },
      milliseconds(10000)));
  const int seen_at_drain = events.load();
  auto d = run_tokenmill({"drain", "--connect", c.endpoint(), busy, "--json"}, milliseconds(60000));
  INFO("drain of " << busy << " after " << seen_at_drain << " chunks; stdout: " << d.out
                   << "\nstderr: " << d.err << "\nnode logs:\n"
                   << c.logs_text());
  REQUIRE(d.exit_code == 0);
  auto rep = last_json_line(d.out);
  REQUIRE(rep.is_object());
  REQUIRE(rep["workers"].size() == 1);
  CHECK(rep["workers"][0]["error"] == "");
  CHECK(rep["workers"][0]["migrated"].get<int>() >= 1);
  client.join();

  // Every token delivered once, the same tokens as undisturbed, valid JSON that fits.
  INFO("stream error: " << moved.error);
  REQUIRE(moved.error.empty());
  CHECK(moved.done);
  REQUIRE(moved.choices.size() == 2);
  size_t total = 0;
  for (const auto& [index, ch] : moved.choices) {
    INFO("choice " << index << ": " << ch.content);
    CHECK(ch.finish_reason == "stop");
    CHECK(fits_colours(ch.content, words));
    // The same tokens; their logprobs alike within float noise (a batch of two may sum in
    // another order than a batch of one).
    const auto& want = ref.choices.at(index).tokens;
    REQUIRE(ch.tokens.size() == want.size());
    size_t same_text = 0, same_logprob = 0;
    for (size_t k = 0; k < want.size(); ++k) {
      same_text += ch.tokens[k].first == want[k].first;
      same_logprob += std::fabs(ch.tokens[k].second - want[k].second) < 1e-3;
    }
    CHECK(same_text == want.size());
    CHECK(same_logprob == want.size());
    CHECK(ch.content == ref.choices.at(index).content);
    total += ch.tokens.size();
  }
  CHECK(moved.usage["completion_tokens"] == total);
  CHECK(moved.usage == ref.usage);

  // Both decode workers end idle: nothing running, no KV block held.
  json st;
  CHECK(eventually(
      [&] {
        st = c.status();
        for (const char* node : {"d0", "d1"}) {
          auto w = worker_on(st, "decode", node);
          if (!w.is_object() || w["running"] != 0 || w["kv_used"] != 0) return false;
        }
        return true;
      },
      milliseconds(10000)));
  INFO("status: " << st.dump());
  CHECK(worker_on(st, "decode", busy)["detail"].get<std::string>().find("draining") !=
        std::string::npos);
  stop_cleanly(c);
}

TEST_CASE(
    "the planner flips a prefill worker to decode under decode-heavy load, failing no request",
    "[integration][planner]") {
  cluster_spec spec;
  spec.prefill_workers = 2;
  // Only an ITL objective, below one decode step (2 ms): decode is the bottleneck from the
  // first interval on; two intervals in a row, then one flip (the cooldown holds the rest).
  spec.planner = "{itl_ms: 1, interval_ms: 200, intervals: 2, cooldown_ms: 600000}";
  cluster c(spec);
  c.launch();
  const int requests = 150;
  process bench({tokenmill_bin(), "bench", "--connect", c.endpoint(), "--concurrency", "6",
                 "--requests", std::to_string(requests), "--input-len", "32", "--output-len", "48",
                 "--json", "--no-progress"});
  json st;
  bool flipped = eventually(
      [&] {
        st = c.status();
        return st.is_object() && st.contains("planner") &&
               st["planner"].value("flips_to_decode", 0) >= 1;
      },
      milliseconds(30000));
  INFO("status: " << st.dump() << "\nnode logs:\n" << c.logs_text());
  REQUIRE(flipped);
  auto code = bench.wait(milliseconds(120000));
  INFO("bench stdout: " << bench.out() << "\nstderr: " << bench.err());
  REQUIRE(code);
  CHECK(*code == 0);
  auto rep = last_json_line(bench.out());
  REQUIRE(rep.is_object());
  CHECK(rep["completed"] == requests);
  CHECK(rep["failed"] == 0);
  CHECK(rep["duplicated"] == 0);
  CHECK(rep["missing"] == 0);
  // p0 now holds a decode worker beside its remaining prefill worker, both serving; the
  // flip is an event with its time, and it was the only one (cooldown).
  st = c.status();
  REQUIRE(st.is_object());
  CHECK(worker_on(st, "decode", "p0").is_object());
  CHECK(worker_on(st, "prefill", "p0").is_object());
  CHECK(st["planner"]["flips_to_decode"] == 1);
  CHECK(st["planner"]["flips_to_prefill"] == 0);
  bool changed = false;
  for (const auto& e : st["planner"]["events"])
    changed = changed || (e["kind"] == "changed" && e["to"] == "decode");
  CHECK(changed);
  auto r = c.generate({"--json", "--token-ids", "--max-tokens", "8", kPrompt});
  CHECK(r.exit_code == 0);
  stop_cleanly(c);
}

TEST_CASE("a second request's prefix is fetched from another decode node's cache",
          "[integration][multinode][kv_fetch]") {
  // A real model on the cpu engine, so that the fetched KV must give the very tokens that
  // recomputing gives (greedy).
  temp_dir models("tokenmill-fetch-model");
  const auto model = make_model(models, "tiny");
  // The bytes move over the inline transport (inside the reply) or over UCX (one-sided
  // puts into the serving node's pool, flushed before the reply).
  const std::string transport = GENERATE(as<std::string>{}, "inline", "ucx");
  INFO("kv_transport " << transport);
  ::unsetenv("UCX_TLS");
  cluster_spec spec;
  spec.name = "fetch";
  spec.decode_nodes = {"d0", "d1"};
  spec.model_path = model;
  spec.kv_transport = transport;
  // Every prompt is prefilled on its decode worker (the prefill worker on p0 stays idle);
  // a request active on a worker costs 50 ms, more than its cached prefix saves.
  spec.router = "{local_prefill_threshold: 1000000, load_ms_per_request: 50}";
  cluster c(spec);
  c.launch();
  auto tokens_of = [&](const std::string& prompt) {
    auto r = c.generate({"--json", "--token-ids", "--ignore-eos", "--temperature", "0",
                         "--max-tokens", "12", prompt});
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.exit_code == 0);
    auto j = last_json_line(r.out);
    REQUIRE(j.is_object());
    return j.at("token_ids").get<std::vector<int64_t>>();
  };
  auto detail_of = [&](const std::string& node) {
    auto w = worker_on(c.status(), "decode", node);
    return w.is_object() ? w.value("detail", std::string()) : std::string();
  };
  bool fetched = false;
  // The second request must land on the worker without the prefix, which takes the first
  // worker being busy: a long stream keeps it so. Should the stream end before the second
  // request is routed (a very slow machine), the round is repeated with fresh prompts.
  for (int round = 0; round < 3 && !fetched; ++round) {
    const auto prompt = id_prompt(1 + 50 * round, 40);  // 2 reusable 16-token blocks
    const auto reference = tokens_of(prompt);           // computed; cached on the worker it ran on
    auto busy = std::make_unique<process>(c.generate_argv(
        {"--token-ids", "--ignore-eos", "--max-tokens", "1900", id_prompt(200 + 10 * round, 8)}));
    REQUIRE(busy->wait_for_output(40, milliseconds(10000)));
    const auto again = tokens_of(prompt);
    CHECK(again == reference);
    busy->signal(SIGTERM);
    busy->wait(milliseconds(5000));
    for (const auto& node : {"d0", "d1"})
      if (detail_of(node).find("fetched 2 blocks") != std::string::npos) fetched = true;
  }
  INFO("d0: " << detail_of("d0") << "\nd1: " << detail_of("d1"));
  CHECK(fetched);
  const auto d0 = detail_of("d0"), d1 = detail_of("d1");
  CHECK((d0.find("served 2 blocks") != std::string::npos ||
         d1.find("served 2 blocks") != std::string::npos));
  CHECK(d0.find("0 failed") != std::string::npos);
  CHECK(d1.find("0 failed") != std::string::npos);
  stop_cleanly(c);
}

TEST_CASE("a prefill worker fetches a prompt's prefix from a decode node's cache",
          "[integration][multinode][kv_fetch]") {
  // A real model on the cpu engine: the fetched KV must give the very tokens computing gave.
  temp_dir models("tokenmill-fetch-model");
  const auto model = models.file("tiny.gguf");
  auto mk = run_tokenmill({"make-model", "--preset", "tiny", "--dtype", "f32", "-o", model});
  REQUIRE(mk.exit_code == 0);
  const std::string transport = GENERATE(as<std::string>{}, "inline", "ucx");
  INFO("kv_transport " << transport);
  ::unsetenv("UCX_TLS");
  cluster_spec spec;
  spec.name = "pfetch";
  spec.model_path = model;
  spec.kv_transport = transport;
  // Every prompt is prefilled on p0, whose pool (8 blocks of 16 tokens) holds one ~100-token
  // prompt: the next evicts most of it there, while d0's large pool keeps it.
  spec.prefill_kv_blocks = 8;
  spec.router = "{local_prefill_threshold: 0}";
  cluster c(spec);
  c.launch();
  auto tokens_of = [&](const std::string& prompt) {
    auto r = c.generate({"--json", "--token-ids", "--ignore-eos", "--temperature", "0",
                         "--max-tokens", "12", prompt});
    INFO("stdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.exit_code == 0);
    auto j = last_json_line(r.out);
    REQUIRE(j.is_object());
    return j.at("token_ids").get<std::vector<int64_t>>();
  };
  auto detail_of = [&](const std::string& kind, const std::string& node) {
    auto w = worker_on(c.status(), kind, node);
    return w.is_object() ? w.value("detail", std::string()) : std::string();
  };
  const auto prompt = id_prompt(1, 100);
  const auto reference = tokens_of(prompt);  // computed on p0; d0 and p0 cache its blocks
  tokens_of(id_prompt(300, 100));            // p0 evicts the first prompt's blocks, d0 not
  // Again: d0 holds the prefix, p0 (almost) none of it: p0 pulls it from d0 and computes
  // only the rest.
  CHECK(tokens_of(prompt) == reference);
  const auto p0 = detail_of("prefill", "p0"), d0 = detail_of("decode", "d0");
  INFO("p0: " << p0 << "\nd0: " << d0);
  std::smatch m;
  REQUIRE(std::regex_search(p0, m, std::regex(R"(fetched (\d+) blocks)")));
  CHECK(std::stoi(m[1]) > 0);
  CHECK(p0.find(", 0 failed") != std::string::npos);
  CHECK(std::regex_search(d0, std::regex(R"(served [1-9]\d* blocks)")));
  stop_cleanly(c);
}
