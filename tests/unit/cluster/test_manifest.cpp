// The host manifest parser (cluster/manifest.hpp): resolution with defaults, the DESIGN.md
// §8 example, a corpus of malformed files each with its expected position and phrase,
// hashing and describe().
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "actors/actors.hpp"
#include "cluster/manifest.hpp"
#include "engine/engine_factory.hpp"
#include "test_profile_fixture.hpp"

using namespace tokenmill;
namespace fs = std::filesystem;

namespace {

const std::string corpus = TOKENMILL_MANIFEST_CORPUS;

std::string corpus_file(const std::string& name) {
  return corpus + "/" + name;
}

/// A directory under the system temp dir, removed with everything in it at scope exit.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("tokenmill_manifest_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  /// Writes `text` to `name` (creating parent directories) and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    auto p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }

 private:
  fs::path path_;
};

/// The lines of an error message.
std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);)
    out.push_back(l);
  return out;
}

/// Every error line has the shape FILE:LINE:COLUMN: FIELD.PATH: what; expected what.
bool well_formed(const std::string& line) {
  static const std::regex shape(R"(^.+:[0-9]+:[0-9]+: [^ :]+: .+; expected .+$)");
  return std::regex_match(line, shape);
}

result<manifest> parse(const std::string& text, manifest_options opts = {false}) {
  return parse_manifest(text, "test.yaml", ".", opts);
}

manifest ok(const result<manifest>& r) {
  INFO((r.ok() ? std::string("ok") : r.error().message));
  REQUIRE(r.ok());
  return r.value();
}

/// A one-node sim manifest with `defaults: DEFAULTS` and `decode` as its last actor.
std::string one_node_with_defaults(const std::string& defaults,
                                   const std::string& decode = "decode") {
  return R"(
cluster: demo
model: {sim: {}}
frontend: {node: head}
defaults: )" +
         defaults + R"(
nodes:
  - name: head
    address: 127.0.0.1
    actors: [router, supervisor, kv_store, prefill, )" +
         decode + R"(]
)";
}

const char* const minimal = R"(
cluster: demo
model: {sim: {}}
frontend: {node: head}
security: {insecure: true}
nodes:
  - name: head
    address: 127.0.0.1
    actors: [router, supervisor, kv_store]
  - name: p0
    address: 10.0.0.2
    actors: [prefill]
  - name: d0
    address: gpu-3.example.org
    actors: [decode]
)";

/// An owned socket for the port tests.
struct test_socket {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ~test_socket() { ::close(fd); }
  /// Binds 127.0.0.1 on an ephemeral port and returns it.
  uint16_t bind_any() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    socklen_t len = sizeof(a);
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    return ntohs(a.sin_port);
  }
};

/// A port that was free a moment ago.
uint16_t free_port() {
  return test_socket{}.bind_any();
}

}  // namespace

TEST_CASE("manifest: a minimal manifest resolves with every default", "[manifest]") {
  auto r = parse(minimal);
  auto m = ok(r);
  CHECK(m.path == "test.yaml");
  CHECK(m.cluster == "demo");
  CHECK(m.model.sim);
  CHECK(m.model.path.empty());
  sim_config def;
  CHECK(m.model.sim_cfg.decode_base_ns == def.decode_base_ns);
  CHECK(m.model.sim_cfg.prefill_ns_per_token == def.prefill_ns_per_token);
  CHECK(m.model.sim_cfg.vocab_size == def.vocab_size);
  CHECK(m.model.sim_cfg.seed == def.seed);
  CHECK(m.model.sim_cfg.layout.block_tokens == 16);
  CHECK(m.defaults.engine == "sim");
  CHECK(m.defaults.block_tokens == 16);
  CHECK(m.defaults.kv_transport == "ucx");
  CHECK(m.frontend.node == "head");
  CHECK(m.frontend.host == "127.0.0.1");  // the frontend node's address
  CHECK(m.frontend.rpc_port == 7700);
  CHECK(m.frontend.http_port == 8000);
  CHECK(m.router.local_prefill_threshold == 0);
  CHECK(m.router.max_inflight == 1024);
  CHECK(m.router.migration_limit == 3);  // migration is on by default
  CHECK(to_router_config(m).migration_limit == 3);
  CHECK(to_router_config(m).request_timeout == std::chrono::seconds(600));
  CHECK(to_router_config(m).stall_timeout == std::chrono::seconds(120));
  // Adaptive admission is on by default with the policy's own defaults.
  CHECK(m.router.max_queue_ms == 2000);
  CHECK(to_router_config(m).admission.max_queue_ns == adaptive_admission_config{}.max_queue_ns);
  CHECK_FALSE(check(to_router_config(m).admission));
  // The manifest's defaults are the router's.
  CHECK(router_config{}.request_timeout ==
        std::chrono::seconds(manifest_router{}.request_timeout_s));
  CHECK(router_config{}.stall_timeout == std::chrono::seconds(manifest_router{}.stall_timeout_s));
  // The router discounts chunk hits by the decode workers' default recompute ratio.
  CHECK(to_router_config(m).recompute_ratio == Approx(0.15));
  CHECK(m.failure.heartbeat_ms == 200);
  CHECK(m.failure.connection_timeout_ms == 1000);
  CHECK(m.restart.max == 5);  // restart is on by default, bounded
  CHECK(m.restart.backoff_ms == 500);

  REQUIRE(m.nodes.size() == 3);
  CHECK(m.nodes[0].port == 7800);  // 7800 + index
  CHECK(m.nodes[1].port == 7801);
  CHECK(m.nodes[2].port == 7802);
  CHECK(m.nodes[0].local);
  CHECK_FALSE(m.nodes[1].local);
  CHECK_FALSE(m.nodes[2].local);
  CHECK(m.nodes[2].address == "gpu-3.example.org");
  CHECK(m.nodes[0].ssh.empty());
  REQUIRE(m.nodes[0].actors.size() == 3);
  CHECK(m.nodes[0].actors[0].kind == role::router);
  CHECK(m.nodes[0].actors[1].kind == role::supervisor);
  CHECK(m.nodes[0].actors[2].kind == role::kv_store);
  CHECK(m.nodes[0].actors[0].name == "head.router0");
  CHECK(m.nodes[0].actors[0].worker() == nullptr);
  CHECK(m.find_node("p0") == &m.nodes[1]);
  CHECK(m.find_node("nope") == nullptr);

  auto* p = m.nodes[1].actors.at(0).prefill();
  REQUIRE(p);
  CHECK(m.nodes[1].actors[0].name == "p0.prefill0");
  CHECK(p->engine == "sim");  // defaults.engine
  CHECK(p->threads == 1);
  CHECK(p->device == 0);
  CHECK(p->kv_blocks == prefill_config{}.num_blocks);
  CHECK(p->chunk == prefill_config{}.token_budget);
  CHECK(p->max_seqs == prefill_config{}.max_seqs);
  CHECK(p->slowdown == 1.0);
  auto* d = m.nodes[2].actors.at(0).decode();
  REQUIRE(d);
  CHECK(d->engine == "sim");
  CHECK(d->kv_blocks == decode_config{}.num_blocks);
  CHECK(d->max_batch == decode_config{}.max_batch);
  CHECK(d->local_prefill_budget == decode_config{}.local_prefill_budget);
}

TEST_CASE("manifest: every field spelled out comes through resolved", "[manifest]") {
  auto r = parse(R"(
cluster: full.cluster-1
model:
  sim: {vocab: 5000, max_context: 2048, prefill_us_per_token: 150, prefill_base_us: 30,
        decode_step_ms: 12.5, decode_per_seq_us: 40, decode_per_ctx_ns: 7, slowdown: 2.0,
        seed: 99}
defaults: {engine: sim, block_tokens: 32, kv_transport: ucx}
kv_layout: {layers: 4, kv_heads: 8, head_dim: 128, dtype_bytes: 4}
frontend: {node: head, host: 0.0.0.0, rpc_port: 9700, http_port: 9000}
router: {local_prefill_threshold: 64, max_inflight: 10, max_queued_prompt_tokens: 5000,
         migration_limit: 5, request_timeout_s: 30, stall_timeout_s: 0, max_queue_ms: 750, admission_window_ms: 3000, admission_min_waiting: 4}
failure: {heartbeat_ms: 50, connection_timeout_ms: 400}
ucx: {op_timeout_ms: 2500, stall_timeout_ms: 300, window_mib: 64}
restart: {max: 2, backoff_ms: 50}
security: {insecure: true}
nodes:
  - name: head
    address: localhost
    port: 9800
    actors: [router, {supervisor: {}}, {kv_store: }]
  - name: w_1
    address: 192.168.1.20
    ssh: alice@192.168.1.20
    actors:
      - prefill: {engine: sim, threads: 4, device: 1, kv_blocks: 100, chunk: 256, max_seqs: 3, slowdown: 0.5}
      - prefill
      - decode: {threads: 2, device: 2, kv_blocks: 300, max_batch: 8, local_prefill_budget: 128, slowdown: 3}
)");
  auto m = ok(r);
  auto& c = m.model.sim_cfg;
  CHECK(c.vocab_size == 5000);
  CHECK(c.max_context == 2048);
  CHECK(c.prefill_ns_per_token == 150'000);
  CHECK(c.prefill_base_ns == 30'000);
  CHECK(c.decode_base_ns == 12'500'000);
  CHECK(c.decode_per_seq_ns == 40'000);
  CHECK(c.decode_per_ctx_token_ns == 7);
  CHECK(c.slowdown == 2.0);
  CHECK(c.seed == 99);
  CHECK(c.layout.layers == 4);
  CHECK(c.layout.kv_heads == 8);
  CHECK(c.layout.head_dim == 128);
  CHECK(c.layout.dtype_bytes == 4);
  CHECK(c.layout.block_tokens == 32);
  CHECK(m.defaults.kv_transport == "ucx");
  CHECK(m.frontend.host == "0.0.0.0");
  CHECK(m.frontend.rpc_port == 9700);
  CHECK(m.frontend.http_port == 9000);
  CHECK(m.router.local_prefill_threshold == 64);
  CHECK(m.router.max_inflight == 10);
  CHECK(m.router.max_queued_prompt_tokens == 5000);
  CHECK(m.router.migration_limit == 5);
  CHECK(m.router.request_timeout_s == 30);
  CHECK(m.router.stall_timeout_s == 0);
  CHECK(m.failure.heartbeat_ms == 50);
  CHECK(m.failure.connection_timeout_ms == 400);
  CHECK(m.ucx.op_timeout_ms == 2500);
  CHECK(m.ucx.stall_timeout_ms == 300);
  CHECK(m.ucx.window_mib == 64);
  CHECK(m.restart.max == 2);
  CHECK(m.restart.backoff_ms == 50);
  REQUIRE(m.nodes.size() == 2);
  CHECK(m.nodes[0].port == 9800);
  CHECK(m.nodes[0].local);
  CHECK(m.nodes[1].port == 7801);
  CHECK(m.nodes[1].ssh == "alice@192.168.1.20");
  REQUIRE(m.nodes[1].actors.size() == 3);
  CHECK(m.nodes[1].actors[0].name == "w_1.prefill0");
  CHECK(m.nodes[1].actors[1].name == "w_1.prefill1");
  CHECK(m.nodes[1].actors[2].name == "w_1.decode0");
  CHECK(m.nodes[1].count(role::prefill) == 2);
  auto* p = m.nodes[1].actors[0].prefill();
  REQUIRE(p);
  CHECK(p->threads == 4);
  CHECK(p->device == 1);
  CHECK(p->kv_blocks == 100);
  CHECK(p->chunk == 256);
  CHECK(p->max_seqs == 3);
  CHECK(p->slowdown == 0.5);
  auto* d = m.nodes[1].actors[2].decode();
  REQUIRE(d);
  CHECK(d->threads == 2);
  CHECK(d->device == 2);
  CHECK(d->kv_blocks == 300);
  CHECK(d->max_batch == 8);
  CHECK(d->local_prefill_budget == 128);
  CHECK(d->slowdown == 3);

  SECTION("the conversions give the runtime's config types") {
    auto rc = to_router_config(m);
    CHECK(rc.local_prefill_threshold == 64);
    CHECK(rc.limits.max_inflight == 10);
    CHECK(rc.limits.max_queued_prompt_tokens == 5000);
    CHECK(rc.migration_limit == 5);
    CHECK(rc.request_timeout == std::chrono::seconds(30));
    CHECK(rc.stall_timeout.count() == 0);
    CHECK(rc.admission.max_queue_ns == 750'000'000);
    CHECK(rc.admission.window_ns == 3'000'000'000);
    CHECK(rc.admission.min_waiting == 4);
    CHECK(rc.block_tokens == 32);
    auto pc = to_prefill_config(*p);
    CHECK(pc.num_blocks == 100);
    CHECK(pc.token_budget == 256);
    CHECK(pc.max_seqs == 3);
    auto dc = to_decode_config(*d);
    CHECK(dc.num_blocks == 300);
    CHECK(dc.max_batch == 8);
    CHECK(dc.local_prefill_budget == 128);
    auto spec = to_engine_spec(m, *p);
    CHECK(spec.kind == "sim");
    CHECK(spec.sim.decode_base_ns == 12'500'000);
    CHECK(spec.sim.slowdown == 1.0);  // model 2.0 x worker 0.5
    CHECK(spec.sim.layout.block_tokens == 32);
    CHECK(spec.sim.layout.layers == 4);
    auto eng = make_engine(spec);
    INFO((eng ? "" : eng.error().message));
    REQUIRE(eng);
    CHECK((*eng)->info().vocab_size == 5000);
  }
}

TEST_CASE("manifest: the DESIGN.md section 8 example parses", "[manifest]") {
  const std::string design = R"(cluster: demo
model: {path: models/tiny.gguf}
defaults: {engine: cpu, block_tokens: 16}
frontend: {node: head, rpc_port: 7700, http_port: 8000}
nodes:
  - name: head
    address: 127.0.0.1          # or a host name; ssh: user@host for remote launch
    actors: [router, supervisor, kv_store]
  - name: p0
    address: 127.0.0.1
    actors: [{prefill: {engine: cpu, threads: 1}}]
  - name: d0
    address: 127.0.0.1
    actors: [{decode: {engine: cpu, threads: 1, max_batch: 32}}]
)";
  SECTION("with a model file beside it, resolved against the manifest's directory") {
    temp_dir dir;
    auto model = dir.write("models/tiny.gguf", "GGUF");
    auto file = dir.write("demo.yaml", design);
    auto r = load_manifest(file, {false});
    auto m = ok(r);
    CHECK(m.path == file);
    CHECK_FALSE(m.model.sim);
    CHECK(m.model.path == model);
    CHECK(m.model.declared_path == "models/tiny.gguf");
    CHECK(m.defaults.engine == "cpu");
    CHECK(m.nodes.at(1).actors.at(0).prefill()->engine == "cpu");
    CHECK(m.nodes.at(2).actors.at(0).decode()->max_batch == 32);
    CHECK(to_engine_spec(m, *m.nodes[2].actors[0].worker()).kind == "cpu");
  }
  SECTION("parse_manifest resolves against base_dir") {
    temp_dir dir;
    auto model = dir.write("models/tiny.gguf", "GGUF");
    auto r = parse_manifest(design, "inline.yaml", dir.path().string(), {false});
    CHECK(ok(r).model.path == model);
  }
  SECTION("without the model file it names the resolved path") {
    temp_dir dir;
    auto file = dir.write("demo.yaml", design);
    auto r = load_manifest(file, {false});
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message,
               Catch::Contains(file + ":2:15: model.path: the model file '" +
                               (dir.path() / "models/tiny.gguf").string() + "' does not exist"));
  }
  SECTION("with a sim model instead") {
    std::string text = design;
    text.replace(text.find("{path: models/tiny.gguf}"), 24, "{sim: {decode_step_ms: 10}}");
    for (size_t at; (at = text.find("cpu")) != std::string::npos;)
      text.replace(at, 3, "sim");
    auto m = ok(parse(text));
    CHECK(m.model.sim);
    CHECK(m.nodes.size() == 3);
  }
}

TEST_CASE("manifest: examples/local-3node.yaml parses", "[manifest]") {
  auto file = corpus + "/../../../../examples/local-3node.yaml";
  auto r = load_manifest(file, {false});
  auto m = ok(r);
  CHECK(m.cluster == "local-3node");
  CHECK(m.model.sim);
  CHECK(m.model.sim_cfg.decode_base_ns == 10'000'000);
  CHECK(m.model.sim_cfg.prefill_ns_per_token == 200'000);
  CHECK(m.frontend.node == "head");
  CHECK(m.frontend.rpc_port == 7700);
  REQUIRE(m.nodes.size() == 3);
  CHECK(m.nodes[0].name == "head");
  CHECK(m.nodes[0].count(role::router) == 1);
  CHECK(m.nodes[0].count(role::supervisor) == 1);
  CHECK(m.nodes[0].count(role::kv_store) == 1);
  CHECK(m.nodes[1].count(role::prefill) == 1);
  CHECK(m.nodes[2].count(role::decode) == 1);
  for (auto& n : m.nodes)
    CHECK(n.address == "127.0.0.1");
}

namespace {

struct corpus_case {
  const char* file;
  int line;            ///< where the error must point (1-based)
  const char* phrase;  ///< must appear on that error line
};

// Generated with the corpus; each file's first line says what is wrong with it.
const corpus_case corpus_cases[] = {
    {"syntax_error.yaml", 9, "syntax error"},
    {"security_hosts_no_tls.yaml", 10,
     "nodes[1].address: '10.0.0.2' is not loopback, so the cluster spans hosts, and nodes would "
     "join and talk in plaintext without authentication; expected security: {tls: auto}"},
    {"security_tls_missing_key.yaml", 6, "security.tls.key: missing required field"},
    {"security_tls_and_insecure.yaml", 6,
     "security.insecure: insecure: true together with tls (the links are encrypted); expected "
     "either tls or insecure: true, not both"},
    {"security_bad_values.yaml", 6,
     "security.tls: got 'yes please'; expected auto (certificates from tokenmill certs init"},
    {"security_bad_values.yaml", 7,
     "security.insecure: got 'maybe'; expected true (plaintext between hosts, on purpose) or "
     "false"},
    {"security_bad_values.yaml", 8, "security.secret: unknown key 'secret'"},
    {"top_level_list.yaml", 2, "the top level is a list"},
    {"empty.yaml", 1, "the manifest is empty"},
    {"two_documents.yaml", 16, "2 YAML documents"},
    {"duplicate_key.yaml", 5, "duplicate key (first given on line 2)"},
    {"unknown_top_key.yaml", 5,
     "unknown key 'routr' (did you mean 'router'?); expected one of cluster, model"},
    {"unknown_node_key.yaml", 11,
     "nodes[1].prt: unknown key 'prt' (did you mean 'port'?); expected one of name, address, ssh, "
     "port, http_port, actors"},
    {"unknown_option_key.yaml", 14,
     "nodes[1].actors[0].prefill.batch: unknown key 'batch'; expected one of engine, threads, "
     "device, kv_blocks, chunk, max_seqs, slowdown, kv_host_blocks, kv_disk_blocks, kv_disk_dir, "
     "recompute_ratio, blend_policy"},
    {"unknown_sim_key.yaml", 5, "model.sim.decode_ms: unknown key 'decode_ms'"},
    {"missing_cluster.yaml", 2, "cluster: missing required field; expected a cluster name"},
    {"missing_nodes.yaml", 2, "nodes: missing required field"},
    {"missing_address.yaml", 6,
     "nodes[0].address: missing required field; expected an IP address or a host name"},
    {"nodes_not_list.yaml", 6, "nodes: got a map; expected a non-empty list of nodes"},
    {"port_string.yaml", 11, "nodes[1].port: got 'abc'; expected a port number from 1 to 65535"},
    {"port_quoted.yaml", 11, "nodes[1].port: got the string \"7801\"; expected a port number"},
    {"port_range.yaml", 6,
     "frontend.http_port: got 70000, out of range; expected a port number from 1 to 65535"},
    {"port_zero.yaml", 8, "nodes[0].port: got 0, out of range"},
    {"negative_threads.yaml", 15,
     "nodes[2].actors[0].decode.threads: got -2, a negative number; expected a whole number from 1 "
     "to 4096"},
    {"zero_kv_blocks.yaml", 12,
     "nodes[1].actors[0].prefill.kv_blocks: got 0, out of range; expected a whole number >= 1"},
    {"fractional_chunk.yaml", 12, "chunk: got 1.5, not a whole number"},
    {"bad_slowdown.yaml", 5, "model.sim.slowdown: got 0, out of range; expected a number > 0"},
    {"bad_vocab.yaml", 4, "model.sim.vocab: got 100, out of range; expected a whole number >= 260"},
    {"bad_cluster_name.yaml", 2, "cluster: 'my cluster' has characters outside [A-Za-z0-9_.-]"},
    {"bad_node_name.yaml", 12, "nodes[2].name: 'd/0' has characters outside [A-Za-z0-9_-]"},
    {"address_with_port.yaml", 7,
     "nodes[0].address: '127.0.0.1:7801' includes a port; expected an IP address or a host name "
     "alone; give the port as port: 7801"},
    {"bad_address.yaml", 7,
     "nodes[0].address: '10.0.0.300' is not a valid IP address or host name"},
    {"duplicate_node_names.yaml", 12,
     "nodes[2].name: duplicate node name 'p0' (also nodes[1], line 9)"},
    {"duplicate_endpoint.yaml", 15,
     "nodes[2].port: localhost:7900 is already the control port of node 'p0' (nodes[1].port, line "
     "11)"},
    {"frontend_port_clash.yaml", 4,
     "frontend.rpc_port: 127.0.0.1:7800 is already the control port of node 'head'"},
    {"no_actors.yaml", 11, "nodes[1].actors: the node runs no actors"},
    {"unknown_role.yaml", 11,
     "nodes[0].actors[2]: unknown actor role 'kvstore' (did you mean 'kv_store'?); expected one of "
     "router, supervisor, kv_store, prefill, decode"},
    {"actor_two_keys.yaml", 12, "nodes[1].actors[0]: a map with 2 keys; expected a list of actors"},
    {"bad_migration_limit.yaml", 4,
     "router.migration_limit: got 1000, out of range; expected a whole number from 0 to 100"},
    {"bad_admission_window.yaml", 4,
     "router.admission_window_ms: got 10, out of range; expected a whole number from 100 to "
     "3600000"},
    {"router_options.yaml", 9,
     "nodes[0].actors[0].router: router takes no options, got a map; expected the bare role name "
     "'router'"},
    {"no_router.yaml", 5, "nodes: no node runs a router; expected exactly one router"},
    {"two_routers.yaml", 12,
     "nodes[1].actors[0]: a second router (the first is nodes[0].actors[0], line 8); expected "
     "exactly one router"},
    {"no_supervisor.yaml", 5, "nodes: no node runs a supervisor; expected exactly one supervisor"},
    {"two_supervisors.yaml", 16,
     "nodes[2].actors[1]: a second supervisor (the first is nodes[0].actors[1], line 8)"},
    {"two_kv_stores.yaml", 13,
     "nodes[1].actors[1]: a second kv_store (the first is nodes[0].actors[2], line 8); expected at "
     "most one kv_store"},
    {"no_decode.yaml", 5, "nodes: no node runs a decode worker"},
    {"no_prefill_path.yaml", 12,
     "nodes[1].actors[0]: the cluster has no prefill worker and router.local_prefill_threshold is "
     "0, so no prompt could be prefilled; expected a prefill worker"},
    {"frontend_unknown_node.yaml", 4,
     "frontend.node: no node is named 'haed'; expected one of the nodes: head, p0, d0"},
    {"frontend_no_router.yaml", 5,
     "frontend.node: node 'p0' runs no router; expected the node that runs the router ('head')"},
    {"missing_frontend.yaml", 2, "frontend: missing required field"},
    {"model_both.yaml", 5,
     "model: both path and sim are given; expected exactly one of path (a model file) or sim"},
    {"model_neither.yaml", 3, "model: neither path nor sim is given"},
    {"model_missing_file.yaml", 4, "model.path: the model file '"},
    {"model_is_directory.yaml", 3, "is a directory"},
    {"bad_engine.yaml", 5, "defaults.engine: unknown value 'tpu'; expected one of sim, cpu, cuda"},
    {"bad_worker_engine.yaml", 16,
     "nodes[2].actors[0].decode.engine: unknown value 'gpu'; expected one of sim, cpu, cuda"},
    {"bad_kv_transport.yaml", 6,
     "defaults.kv_transport: unknown value 'rdma'; expected one of inline, ucx"},
    {"bad_kv_memory.yaml", 6,
     "defaults.kv_memory: got '12X'; expected a positive number with an optional unit"},
    {"cpu_engine_sim_model.yaml", 12,
     "nodes[1].actors[0].prefill.engine: engine 'cpu' needs a model file, but the model is sim"},
    {"kv_layout_with_path.yaml", 4,
     "kv_layout: given for a model file, which defines its own layout"},
    {"bad_dtype.yaml", 5, "kv_layout.dtype_bytes: got 3"},
    {"ucx_stall_not_below_timeout.yaml", 5,
     "ucx.stall_timeout_ms: 5000 ms is not shorter than ucx.op_timeout_ms (5000 ms)"},
    {"ucx_bad_window.yaml", 5, "ucx.window_mib"},
    {"timeout_not_above_heartbeat.yaml", 7,
     "failure.connection_timeout_ms: 500 ms is not longer than failure.heartbeat_ms (500 ms)"},
    {"section_not_map.yaml", 5,
     "router: got '5'; expected a map with keys local_prefill_threshold"},
    {"restart_unknown_key.yaml", 5,
     "restart.backof_ms: unknown key 'backof_ms' (did you mean 'backoff_ms'?); expected one of "
     "max, backoff_ms"},
    {"restart_zero_backoff.yaml", 5,
     "restart.backoff_ms: got 0, out of range; expected a whole number from 1 to 30000"},
    {"restart_negative_max.yaml", 5,
     "restart.max: got -1, a negative number; expected a whole number from 0 (never restart) to "
     "1000"},
    {"restart_not_map.yaml", 5, "restart: got 'true'; expected a map with keys max, backoff_ms"},
    {"planner_no_objective.yaml", 5,
     "planner: neither ttft_ms nor itl_ms is given; expected at least one objective"},
    {"planner_unknown_key.yaml", 5, "planner.cooldown: unknown key 'cooldown'"},
    {"planner_bad_band.yaml", 7, "planner.band: got 0.5, out of range; expected a number >= 1"},
    {"planner_zero_min_decode.yaml", 5,
     "planner.min_decode: got 0, out of range; expected a whole number from 1 to 1024"},
};

}  // namespace

TEST_CASE("manifest: every malformed file in the corpus is refused at the right place",
          "[manifest]") {
  STATIC_REQUIRE(std::size(corpus_cases) >= 20);
  for (auto& c : corpus_cases) {
    auto file = corpus_file(c.file);
    auto r = load_manifest(file, {false});
    INFO(c.file);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == errc::invalid_request);
    auto& msg = r.error().message;
    INFO(msg);
    auto prefix = file + ":" + std::to_string(c.line) + ":";
    bool found = false;
    for (auto& l : lines_of(msg)) {
      CHECK(well_formed(l));
      if (l.rfind(prefix, 0) == 0 && l.find(c.phrase) != std::string::npos) found = true;
    }
    CHECK(found);
  }
}

TEST_CASE("manifest: the corpus table covers every corpus file", "[manifest]") {
  std::set<std::string> listed{"multi_error.yaml"};
  for (auto& c : corpus_cases)
    listed.insert(c.file);
  for (auto& e : fs::directory_iterator(corpus)) {
    if (e.path().extension() != ".yaml") continue;
    INFO(e.path());
    CHECK(listed.count(e.path().filename().string()) == 1);
  }
}

TEST_CASE("manifest: a missing model file names the resolved path", "[manifest]") {
  auto r = load_manifest(corpus_file("model_missing_file.yaml"), {false});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains(corpus + "/models/missing.gguf' does not exist"));
}

TEST_CASE("manifest: every problem in a file is reported, in file order", "[manifest]") {
  auto file = corpus_file("multi_error.yaml");
  auto r = load_manifest(file, {false});
  REQUIRE_FALSE(r.ok());
  auto lines = lines_of(r.error().message);
  INFO(r.error().message);
  const std::vector<std::pair<std::string, std::string>> expected = {
      {":3:22: ", "model.sim.vocab: got 'ten'"},
      {":4:20: ", "defaults.engine: unknown value 'tpu'"},
      {":5:34: ", "frontend.rpc_port: got -1, a negative number"},
      {":9:5: ", "nodes[0].colour: unknown key 'colour'"},
      {":13:35: ", "nodes[1].actors[0].decode.max_batch: got 0, out of range"},
  };
  REQUIRE(lines.size() == expected.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    CHECK(well_formed(lines[i]));
    CHECK_THAT(lines[i], Catch::StartsWith(file + expected[i].first + expected[i].second));
  }
}

TEST_CASE("manifest: files that are not manifests", "[manifest]") {
  SECTION("a file that does not exist") {
    auto r = load_manifest("/nonexistent/tokenmill/cluster.yaml");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == errc::invalid_request);
    CHECK(r.error().message ==
          "/nonexistent/tokenmill/cluster.yaml: no such file; expected a YAML host manifest file");
  }
  SECTION("a directory") {
    auto r = load_manifest(corpus);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message == corpus +
                                   ": is a directory, not a file; expected a YAML host "
                                   "manifest file");
  }
  SECTION("empty text") {
    auto r = parse("");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message ==
          "test.yaml:1:1: (document): the manifest is empty; expected a map with keys cluster, "
          "model, frontend, nodes (and optionally defaults, kv_layout, router, failure, ucx, "
          "restart, planner, security)");
  }
  SECTION("a scalar") {
    auto r = parse("just words");
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::StartsWith("test.yaml:1:1: (document): the top level is "
                                                    "'just words'; expected a map"));
  }
  SECTION("a ',' where a document starts (yaml-cpp 0.7's LoadAll never returned)") {
    // Found by fuzz_manifest: tests/fuzz/corpus/fuzz_manifest/regression-stray-comma.
    for (const char* text : {",", ",\x10\"", " , x", "---\n,", "a: 1\n...\n,"}) {
      auto r = parse(text);
      REQUIRE_FALSE(r.ok());
      CHECK_THAT(r.error().message,
                 Catch::Contains("(yaml): syntax error: a ',' outside a flow collection"));
      CHECK(well_formed(r.error().message));
    }
  }
  SECTION("an unreadable model file") {
    if (::geteuid() == 0) {
      WARN("skipped: running as root, which can read any file");
      return;
    }
    temp_dir dir;
    auto model = dir.write("m.gguf", "GGUF");
    fs::permissions(model, fs::perms::none);
    std::string text = minimal;
    text.replace(text.find("{sim: {}}"), 9, "{path: m.gguf}\ndefaults: {engine: sim}");
    auto r = parse_manifest(text, "t.yaml", dir.path().string(), {false});
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("cannot be read"));
  }
}

TEST_CASE("manifest: ports in use on local nodes are refused", "[manifest]") {
  auto text = [](uint16_t control, uint16_t rpc, uint16_t http) {
    return "cluster: demo\n"
           "model: {sim: {}}\n"
           "frontend: {node: head, rpc_port: " +
           std::to_string(rpc) + ", http_port: " + std::to_string(http) +
           "}\n"
           "nodes:\n"
           "  - name: head\n"
           "    address: 127.0.0.1\n"
           "    port: " +
           std::to_string(control) +
           "\n"
           "    actors: [router, supervisor, prefill, decode]\n";
  };
  test_socket busy;
  auto port = busy.bind_any();
  REQUIRE(::listen(busy.fd, 1) == 0);
  auto rpc = free_port();
  auto http = free_port();
  while (http == rpc)
    http = free_port();

  auto r = parse(text(port, rpc, http), {true});
  REQUIRE_FALSE(r.ok());
  INFO(r.error().message);
  CHECK_THAT(r.error().message,
             Catch::StartsWith("test.yaml:7:11: nodes[0].port: 127.0.0.1:" + std::to_string(port) +
                               " (the control port of node 'head') cannot be bound now: "));
  CHECK(lines_of(r.error().message).size() == 1);
  // The same manifest passes without the check, and with every port free.
  CHECK(parse(text(port, rpc, http), {false}).ok());
  auto control = free_port();
  auto free_result = parse(text(control, rpc, http), {true});
  INFO((free_result.ok() ? std::string() : free_result.error().message));
  CHECK(free_result.ok());
}

TEST_CASE("manifest: the hash follows meaning, not spelling", "[manifest]") {
  auto base = ok(parse(minimal));
  auto h = manifest_hash(base);

  SECTION("equal for reordered keys, spelled-out defaults and block style") {
    auto same = ok(parse(R"(
nodes:
  - actors: [router, supervisor, kv_store]
    address: 127.0.0.1
    name: head
    port: 7800
  - {name: p0, address: 10.0.0.2, actors: [{prefill: {engine: sim, threads: 1, chunk: 512}}]}
  - name: d0
    actors:
      - decode:
          max_batch: 64
          kv_blocks: 4096
    address: gpu-3.example.org
failure: {connection_timeout_ms: 1000, heartbeat_ms: 200}
router: {max_inflight: 1024, local_prefill_threshold: 0}
frontend: {http_port: 8000, host: 127.0.0.1, node: head, rpc_port: 7700}
defaults: {kv_transport: ucx, block_tokens: 16, engine: sim}
kv_layout: {layers: 2, kv_heads: 2, head_dim: 64, dtype_bytes: 2}
model:
  sim: {decode_step_ms: 10, prefill_us_per_token: 200, slowdown: 1.0}
security:
  insecure: true
cluster: demo
)"));
    CHECK(canonical_form(same) == canonical_form(base));
    CHECK(manifest_hash(same) == h);
    // Where the file lives is not part of the content.
    CHECK(manifest_hash(ok(parse_manifest(minimal, "elsewhere.yaml", "/tmp", {false}))) == h);
  }
  SECTION("equal whatever the restart policy: only the launcher reads it") {
    for (const char* r : {"restart: {max: 0}", "restart: {max: 9, backoff_ms: 20}"}) {
      INFO(r);
      auto other = ok(parse(std::string(minimal) + r + "\n"));
      CHECK((other.restart.max != base.restart.max ||
             other.restart.backoff_ms != base.restart.backoff_ms));
      CHECK(manifest_hash(other) == h);
    }
  }
  SECTION("different when anything changes") {
    const std::vector<std::pair<std::string, std::string>> edits = {
        {"cluster: demo", "cluster: demo2"},
        {"model: {sim: {}}", "model: {sim: {decode_step_ms: 11}}"},
        {"model: {sim: {}}", "model: {sim: {seed: 5}}"},
        {"model: {sim: {}}", "model: {sim: {}}\nkv_layout: {layers: 3}"},
        {"model: {sim: {}}", "model: {sim: {}}\ndefaults: {block_tokens: 32}"},
        {"model: {sim: {}}", "model: {sim: {}}\ndefaults: {kv_transport: inline}"},
        {"model: {sim: {}}", "model: {sim: {}}\nrouter: {max_inflight: 7}"},
        {"model: {sim: {}}", "model: {sim: {}}\nrouter: {migration_limit: 0}"},
        {"model: {sim: {}}", "model: {sim: {}}\nrouter: {stall_timeout_s: 60}"},
        {"model: {sim: {}}", "model: {sim: {}}\nfailure: {heartbeat_ms: 100}"},
        {"frontend: {node: head}", "frontend: {node: head, http_port: 8001}"},
        {"address: 10.0.0.2", "address: 10.0.0.3"},
        {"address: 10.0.0.2", "address: 10.0.0.2\n    port: 7900"},
        {"address: 10.0.0.2", "address: 10.0.0.2\n    ssh: bob@10.0.0.2"},
        {"actors: [prefill]", "actors: [{prefill: {threads: 2}}]"},
        {"actors: [prefill]", "actors: [{prefill: {slowdown: 1.5}}]"},
        {"actors: [prefill]", "actors: [prefill, prefill]"},
        {"actors: [decode]", "actors: [{decode: {max_batch: 63}}]"},
        {"name: d0", "name: d1"},
        {"model: {sim: {}}", "model: {sim: {}}\nplanner: {ttft_ms: 300}"},
        {"model: {sim: {}}", "model: {sim: {}}\nplanner: {ttft_ms: 300, cooldown_ms: 1}"},
    };
    std::set<uint64_t> seen{h};
    for (auto& [from, to] : edits) {
      std::string text = minimal;
      auto at = text.find(from);
      REQUIRE(at != std::string::npos);
      text.replace(at, from.size(), to);
      INFO(to);
      auto changed = manifest_hash(ok(parse(text)));
      CHECK(changed != h);
      CHECK(seen.insert(changed).second);
    }
  }
}

TEST_CASE("manifest: the planner section", "[manifest]") {
  auto off = ok(parse(minimal));
  CHECK_FALSE(off.planner);
  CHECK_THAT(describe(off), Catch::Contains("planner: off"));

  auto on = ok(parse(std::string(minimal) + R"(planner:
  ttft_ms: 300
  itl_ms: 30
  percentile: 95
  interval_ms: 500
  min_prefill: 0
  min_decode: 2
  cooldown_ms: 4000
  intervals: 2
  high: 0.9
  band: 2
  prefill_jobs_per_worker: 8
  change_timeout_ms: 9000
  rebalance_moves: 5
)"));
  REQUIRE(on.planner);
  const auto& p = *on.planner;
  CHECK(p.ttft_ms == 300);
  CHECK(p.itl_ms == 30);
  CHECK(p.percentile == 95);
  CHECK(p.interval_ms == 500);
  CHECK(p.min_prefill == 0);
  CHECK(p.min_decode == 2);
  CHECK(p.cooldown_ms == 4000);
  CHECK(p.intervals == 2);
  CHECK(p.high == Approx(0.9));
  CHECK(p.band == Approx(2));
  CHECK(p.prefill_jobs_per_worker == 8);
  CHECK(p.change_timeout_ms == 9000);
  CHECK(p.rebalance_moves == 5);
  CHECK(p.decode_max_batch == 64);  // the decode worker's default max_batch
  CHECK(validate(p).empty());
  auto text = describe(on);
  INFO(text);
  CHECK_THAT(text, Catch::Contains("planner: TTFT p95 300 ms, ITL p95 30 ms; every 500 ms"));
  CHECK_THAT(text, Catch::Contains("cooldown 4000 ms"));
  CHECK_THAT(canonical_form(on), Catch::Contains("planner.ttft_ms=300\n"));
  CHECK_THAT(canonical_form(on), Catch::Contains("planner.rebalance_moves=5\n"));
  CHECK_THAT(text, Catch::Contains("up to 5 sequences move to it"));
  CHECK_THAT(canonical_form(off), !Catch::Contains("planner"));

  // Defaults, and the decode batch taken from the manifest's decode worker.
  auto dflt = ok(parse(std::string(minimal) + "planner: {itl_ms: 25}\n"));
  REQUIRE(dflt.planner);
  CHECK(dflt.planner->ttft_ms == 0);
  CHECK(dflt.planner->interval_ms == 2000);
  CHECK(dflt.planner->cooldown_ms == 10000);
  CHECK(dflt.planner->rebalance_moves == 16);
  // The default is not in the canonical form: manifests written before it keep their hash.
  CHECK_THAT(canonical_form(dflt), !Catch::Contains("rebalance_moves"));
  std::string text32 = minimal;
  text32.replace(text32.find("actors: [decode]"), 16, "actors: [{decode: {max_batch: 32}}]");
  CHECK(ok(parse(text32 + "planner: {itl_ms: 25}\n")).planner->decode_max_batch == 32);
  CHECK_THAT(describe(dflt), Catch::Contains("TTFT p90 none, ITL p90 25 ms"));
}

TEST_CASE("manifest: describe() shows the resolved cluster", "[manifest]") {
  auto r = parse(R"(
cluster: demo
model: {sim: {decode_step_ms: 10}}
frontend: {node: head}
security: {tls: auto, secret_file: keys/secret}
nodes:
  - name: head
    address: 127.0.0.1
    actors: [router, supervisor, kv_store]
  - name: p0
    address: 10.0.0.2
    ssh: carol@10.0.0.2
    port: 7901
    actors: [{prefill: {threads: 3, chunk: 128}}]
  - name: d0
    address: gpu-3.example.org
    actors: [{decode: {max_batch: 32}}]
)");
  auto text = describe(ok(r));
  INFO(text);
  for (auto s :
       {"cluster demo", "model: sim", "10 ms/step", "frontend: node head", "rpc 127.0.0.1:7700",
        "http 127.0.0.1:8000", "head  127.0.0.1:7800 (http 8000)  local",
        "p0  10.0.0.2:7901 (http 8002)  ssh carol@10.0.0.2",
        "d0  gpu-3.example.org:7802 (http 8003)", "router (head.router0)",
        "supervisor (head.supervisor0)", "kv_store (head.kv_store0)",
        "prefill (p0.prefill0): engine sim, threads 3", "chunk 128",
        "decode (d0.decode0): engine sim", "max_batch 32", "kv_blocks 4096",
        "restart: up to 5 in a row, the first after 500 ms, doubling (at most 30 s)",
        "security: tls auto (certificates in certs), cluster secret keys/secret"})
    CHECK_THAT(text, Catch::Contains(s));
  auto off = describe(ok(parse(std::string(minimal) + "restart: {max: 0}\n")));
  CHECK_THAT(off, Catch::Contains("restart: off"));
}

TEST_CASE("manifest: every node has an HTTP port for /metrics", "[manifest]") {
  const std::string text = R"(
cluster: demo
model: {sim: {decode_step_ms: 10}}
frontend: {node: head, http_port: 9000}
nodes:
  - name: head
    address: 127.0.0.1
    actors: [router, supervisor, kv_store]
  - name: p0
    address: 127.0.0.1
    actors: [prefill]
  - name: d0
    address: 127.0.0.1
    http_port: 9500
    actors: [decode]
)";
  auto m = ok(parse(text));
  CHECK(m.nodes[0].http_port == 9000);  // the frontend's node: its API port
  CHECK(m.nodes[1].http_port == 9002);  // frontend.http_port + 1 + index
  CHECK(m.nodes[2].http_port == 9500);  // as given

  // A node's HTTP port taken by another listener on the same address is refused.
  std::string clash = text;
  clash.replace(clash.find("http_port: 9500"), 15, "http_port: 7801");
  auto r = parse(clash);
  REQUIRE_FALSE(r.ok());
  INFO(r.error().message);
  CHECK(r.error().message.find("nodes[2].http_port") != std::string::npos);
  CHECK(r.error().message.find("the control port of node 'p0'") != std::string::npos);

  std::string bad = text;
  bad.replace(bad.find("http_port: 9500"), 15, "http_port: 0");
  auto b = parse(bad);
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().message.find("http_port") != std::string::npos);
}

TEST_CASE("manifest: defaults.kv_memory is a node's KV budget", "[manifest]") {
  auto with = [](const std::string& defaults, const std::string& decode) {
    return one_node_with_defaults(defaults, decode);
  };
  auto m = ok(parse(with("{kv_memory: 1.5GiB}", "{decode: {kv_blocks: 100}}")));
  REQUIRE(m.defaults.kv_memory);
  CHECK(*m.defaults.kv_memory == 3 * (uint64_t{1} << 29));
  const auto& actors = m.nodes[0].actors;
  CHECK_FALSE(actors[3].prefill()->kv_blocks_given);
  CHECK(actors[4].decode()->kv_blocks_given);
  CHECK(actors[4].decode()->kv_blocks == 100);
  CHECK_THAT(describe(m), Catch::Contains("kv_memory 1.50 GiB"));
  // Bytes as a plain number; absent: no budget, and the hash of a manifest without it is
  // unchanged by the new key.
  CHECK(*ok(parse(with("{kv_memory: 1048576}", "decode"))).defaults.kv_memory == 1048576);
  auto without = ok(parse(with("{engine: sim}", "decode")));
  CHECK_FALSE(without.defaults.kv_memory);
  CHECK(manifest_hash(without) != manifest_hash(ok(parse(with("{kv_memory: 1G}", "decode")))));
  for (const char* bad : {"0", "lots", "-1G", "[1, 2]"}) {
    INFO(bad);
    auto r = parse(with(std::string("{kv_memory: ") + bad + "}", "decode"));
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("defaults.kv_memory"));
    CHECK_THAT(r.error().message, Catch::Contains("e.g. 512M or 2GiB"));
  }
}

TEST_CASE("manifest: the frontend's API key file, metrics protection and TLS files", "[manifest]") {
  auto off = ok(parse(minimal));
  CHECK(off.frontend.api_key_file.empty());
  CHECK_FALSE(off.frontend.protect_metrics);
  CHECK(off.frontend.tls_cert.empty());

  std::string text = minimal;
  text.replace(text.find("frontend: {node: head}"), 22,
               "frontend: {node: head, api_key_file: keys/api.txt, protect_metrics: true, "
               "tls_cert: /etc/tm/cert.pem, tls_key: tls/key.pem}");
  auto m = ok(parse_manifest(text, "/srv/cluster/m.yaml", "/srv/cluster", {false}));
  CHECK(m.frontend.api_key_file == "/srv/cluster/keys/api.txt");  // beside the manifest
  CHECK(m.frontend.protect_metrics);
  CHECK(m.frontend.tls_cert == "/etc/tm/cert.pem");
  CHECK(m.frontend.tls_key == "/srv/cluster/tls/key.pem");

  std::string bad_bool = minimal;
  bad_bool.replace(bad_bool.find("frontend: {node: head}"), 22,
                   "frontend: {node: head, protect_metrics: yes please}");
  auto b = parse(bad_bool);
  REQUIRE_FALSE(b.ok());
  CHECK_THAT(b.error().message, Catch::Contains("frontend.protect_metrics"));

  std::string half = minimal;
  half.replace(half.find("frontend: {node: head}"), 22,
               "frontend: {node: head, tls_cert: cert.pem}");
  auto h = parse(half);
  REQUIRE_FALSE(h.ok());
  CHECK_THAT(h.error().message, Catch::Contains("only one of tls_cert and tls_key"));

  std::string empty_path = minimal;
  empty_path.replace(empty_path.find("frontend: {node: head}"), 22,
                     "frontend: {node: head, api_key_file: ''}");
  auto e = parse(empty_path);
  REQUIRE_FALSE(e.ok());
  CHECK_THAT(e.error().message, Catch::Contains("frontend.api_key_file"));
}

TEST_CASE("manifest: the router's cost model: weights, rates and an engine profile",
          "[manifest][routing_policy]") {
  // Defaults.
  auto dflt = ok(parse(minimal));
  CHECK(dflt.router.prefill_weight == 1);
  CHECK(dflt.router.load_ms_per_request == 10);
  CHECK_FALSE(dflt.router.profile_data);
  auto rc = to_router_config(dflt);
  CHECK(rc.cost.weights.queue == 1);
  CHECK(rc.cost.kv_bytes_per_s == Approx(5e9));
  CHECK(rc.cost.load_s_per_request == Approx(0.01));
  CHECK(rc.default_speed.tokens_per_s == 4000);
  CHECK(rc.speeds.empty());
  CHECK_THAT(describe(dflt), Catch::Contains("router cost model: weights prefill 1, queue 1"));

  // Everything given, with a profile of the sim engine beside the manifest.
  temp_dir dir;
  dir.write("prof/sim.json", profile_to_json(tokenmill::testing::analytic_profile()));
  std::string text = minimal;
  text.replace(text.find("actors: [prefill]"), 17, "actors: [{prefill: {chunk: 256}}]");
  text +=
      "router: {prefill_weight: 2, queue_weight: 0.5, transfer_weight: 0, load_weight: 3,\n"
      "         prefill_tokens_per_s: 900, kv_transfer_gbps: 12.5, load_ms_per_request: 2,\n"
      "         profile: prof/sim.json}\n";
  auto m = ok(parse_manifest(text, "test.yaml", dir.path().string(), {false}));
  CHECK(m.router.profile == (dir.path() / "prof/sim.json").lexically_normal().string());
  REQUIRE(m.router.profile_data);
  rc = to_router_config(m);
  CHECK(rc.cost.weights.prefill == 2);
  CHECK(rc.cost.weights.queue == 0.5);
  CHECK(rc.cost.weights.transfer == 0);
  CHECK(rc.cost.weights.load == 3);
  CHECK(rc.cost.kv_bytes_per_s == Approx(12.5e9));
  CHECK(rc.cost.load_s_per_request == Approx(0.002));
  CHECK(rc.default_speed.tokens_per_s == 900);
  // Both workers run the sim engine (the default): both get the profile's curve, each at
  // its own chunk (the decode worker's local prefill budget, 512).
  REQUIRE(rc.speeds.count("p0.prefill0") == 1);
  REQUIRE(rc.speeds.count("d0.decode0") == 1);
  CHECK(rc.speeds["p0.prefill0"].source == m.router.profile);
  CHECK_FALSE(rc.speeds["p0.prefill0"].points.empty());
  CHECK(uncached_prefill_seconds(rc.speeds["p0.prefill0"], 2048, 0) ==
        Approx(profile_prefill_seconds(*m.router.profile_data, 256, 2048)));
  CHECK(uncached_prefill_seconds(rc.speeds["d0.decode0"], 2048, 0) ==
        Approx(profile_prefill_seconds(*m.router.profile_data, 512, 2048)));
  CHECK_THAT(canonical_form(m), Catch::Contains("router.profile=13:prof/sim.json\n"));
  CHECK(manifest_hash(m) != manifest_hash(dflt));

  // A profile of another engine than the workers': they keep the configured rate.
  auto cpu_prof = tokenmill::testing::analytic_profile();
  cpu_prof.engine = "cpu";
  cpu_prof.has_sim = false;
  cpu_prof.model_path = "/models/x.gguf";
  cpu_prof.model_name = "x";
  dir.write("prof/cpu.json", profile_to_json(cpu_prof));
  std::string other = text;
  other.replace(other.find("prof/sim.json"), 13, "prof/cpu.json");
  auto mc = ok(parse_manifest(other, "test.yaml", dir.path().string(), {false}));
  REQUIRE(mc.router.profile_data);
  CHECK(mc.router.profile_data->engine == "cpu");
  CHECK(to_router_config(mc).speeds.empty());
}

TEST_CASE("manifest: bad cost-model settings are refused naming the field",
          "[manifest][routing_policy]") {
  temp_dir dir;
  dir.write("bad.json", "{\"version\": 1}");
  dir.write("notjson.json", "this is not json");
  auto refused = [&](const std::string& router, const std::string& phrase) {
    auto r = parse_manifest(std::string(minimal) + "router: " + router + "\n", "test.yaml",
                            dir.path().string(), {false});
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK_THAT(r.error().message, Catch::Contains(phrase));
    for (const auto& l : lines_of(r.error().message))
      CHECK(well_formed(l));
  };
  refused("{prefill_weight: -1}", "router.prefill_weight");
  refused("{load_weight: lots}", "router.load_weight");
  refused("{prefill_tokens_per_s: 0}", "router.prefill_tokens_per_s");
  refused("{kv_transfer_gbps: -3}", "router.kv_transfer_gbps");
  refused("{load_ms_per_request: -0.5}", "router.load_ms_per_request");
  refused("{profile: missing.json}", "router.profile");
  refused("{profile: missing.json}", "cannot be read");
  refused("{profile: bad.json}", "router.profile");
  refused("{profile: notjson.json}", "router.profile");
  refused("{profile: .}", "router.profile");
  refused("{cost_weight: 1}", "cost_weight");
}

TEST_CASE("manifest: a worker's second KV tier, and its onboarding rates in the router",
          "[manifest][kv_tier]") {
  // Off by default.
  auto dflt = ok(parse(minimal));
  for (const auto& n : dflt.nodes)
    for (const auto& a : n.actors)
      if (auto* w = a.worker()) {
        CHECK(w->kv_host_blocks == 0);
        CHECK(w->kv_disk_blocks == 0);
      }
  auto rc = to_router_config(dflt);
  CHECK(rc.cost.host_onboard_bytes_per_s == Approx(10e9));
  CHECK(rc.cost.disk_onboard_bytes_per_s == Approx(2e9));

  temp_dir dir;
  std::string text = minimal;
  text.replace(text.find("actors: [prefill]"), 17,
               "actors: [{prefill: {kv_host_blocks: 64, kv_disk_blocks: 256, kv_disk_dir: "
               "spill}}]");
  text += "router: {kv_host_onboard_gbps: 20, kv_disk_onboard_gbps: 0.5}\n";
  auto m = ok(parse_manifest(text, "test.yaml", dir.path().string(), {false}));
  const prefill_options* p = nullptr;
  for (const auto& n : m.nodes)
    for (const auto& a : n.actors)
      if (a.prefill()) p = a.prefill();
  REQUIRE(p);
  CHECK(p->kv_host_blocks == 64);
  CHECK(p->kv_disk_blocks == 256);
  CHECK(p->kv_disk_dir == (dir.path() / "spill").lexically_normal().string());
  auto pc = to_prefill_config(*p);
  CHECK(pc.tier.host_blocks == 64);
  CHECK(pc.tier.disk_blocks == 256);
  CHECK(pc.tier.disk_dir == p->kv_disk_dir);
  rc = to_router_config(m);
  CHECK(rc.cost.host_onboard_bytes_per_s == Approx(20e9));
  CHECK(rc.cost.disk_onboard_bytes_per_s == Approx(0.5e9));
  CHECK_THAT(describe(m), Catch::Contains("kv_host_blocks 64, kv_disk_blocks 256"));
  CHECK(manifest_hash(m) != manifest_hash(dflt));

  auto refused = [&](const std::string& from, const std::string& to, const std::string& phrase) {
    std::string bad = minimal;
    bad.replace(bad.find(from), from.size(), to);
    auto r = parse_manifest(bad, "test.yaml", dir.path().string(), {false});
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK_THAT(r.error().message, Catch::Contains(phrase));
  };
  refused("actors: [prefill]", "actors: [{prefill: {kv_disk_blocks: 8}}]",
          "prefill.kv_disk_blocks: got 8 with no kv_host_blocks");
  refused("actors: [prefill]", "actors: [{prefill: {kv_host_blocks: -1}}]",
          "prefill.kv_host_blocks");
  refused("actors: [prefill]", "actors: [{prefill: {kv_disk_dir: [a]}}]", "prefill.kv_disk_dir");
  std::string bad_rate = std::string(minimal) + "router: {kv_disk_onboard_gbps: 0}\n";
  auto r = parse_manifest(bad_rate, "test.yaml", dir.path().string(), {false});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains("router.kv_disk_onboard_gbps"));
}

TEST_CASE("manifest worker options default to the actor configs' defaults", "[manifest]") {
  // (At run time: the configs hold the node's grammar cache, a shared_ptr, so they are
  // not literal types that a static_assert could build.)
  const prefill_config pc;
  const decode_config dc;
  CHECK(prefill_options{}.kv_blocks == pc.num_blocks);
  CHECK(prefill_options{}.chunk == pc.token_budget);
  CHECK(prefill_options{}.max_seqs == pc.max_seqs);
  CHECK(decode_options{}.kv_blocks == dc.num_blocks);
  CHECK(decode_options{}.max_batch == dc.max_batch);
  CHECK(decode_options{}.local_prefill_budget == dc.local_prefill_budget);
  CHECK_FALSE(pc.grammars);
  CHECK_FALSE(dc.grammars);
}

TEST_CASE("manifest: router.fetch and fetch_overhead_ms reach the router's fetch settings",
          "[manifest]") {
  auto dflt = ok(parse_manifest(minimal, "test.yaml", "/tmp", {false}));
  auto rc = to_router_config(dflt);
  CHECK(rc.fetch.enabled);
  CHECK(rc.fetch.overhead_s == Approx(0.0005));
  auto m =
      ok(parse_manifest(std::string(minimal) + "router: {fetch: false, fetch_overhead_ms: 2}\n",
                        "test.yaml", "/tmp", {false}));
  rc = to_router_config(m);
  CHECK_FALSE(rc.fetch.enabled);
  CHECK(rc.fetch.overhead_s == Approx(0.002));
  CHECK(manifest_hash(m) != manifest_hash(dflt));
  // Written at their defaults, the hash does not change.
  auto same =
      ok(parse_manifest(std::string(minimal) + "router: {fetch: true, fetch_overhead_ms: 0.5}\n",
                        "test.yaml", "/tmp", {false}));
  CHECK(manifest_hash(same) == manifest_hash(dflt));
  for (const auto& [bad, phrase] :
       {std::pair<std::string, std::string>{"router: {fetch: maybe}\n", "router.fetch"},
        std::pair<std::string, std::string>{"router: {fetch_overhead_ms: -1}\n",
                                            "router.fetch_overhead_ms"}}) {
    auto r = parse_manifest(std::string(minimal) + bad, "test.yaml", "/tmp", {false});
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK_THAT(r.error().message, Catch::Contains(phrase));
  }
}

TEST_CASE("manifest: router.ttft_slo_ms reaches adaptive admission, off by default", "[manifest]") {
  auto dflt = ok(parse_manifest(minimal, "test.yaml", "/tmp", {false}));
  CHECK(dflt.router.ttft_slo_ms == 0);
  CHECK(to_router_config(dflt).admission.ttft_slo_ns == 0);
  auto m = ok(parse_manifest(std::string(minimal) + "router: {ttft_slo_ms: 300}\n", "test.yaml",
                             "/tmp", {false}));
  CHECK(to_router_config(m).admission.ttft_slo_ns == 300'000'000);
  CHECK_FALSE(check(to_router_config(m).admission));
  CHECK(manifest_hash(m) != manifest_hash(dflt));
  CHECK_THAT(describe(m), Catch::Contains("ttft_slo 300 ms"));
  // Written at its default (off), the hash does not change.
  auto same = ok(parse_manifest(std::string(minimal) + "router: {ttft_slo_ms: 0}\n", "test.yaml",
                                "/tmp", {false}));
  CHECK(manifest_hash(same) == manifest_hash(dflt));
  auto r = parse_manifest(std::string(minimal) + "router: {ttft_slo_ms: -5}\n", "test.yaml", "/tmp",
                          {false});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains("router.ttft_slo_ms"));
}

TEST_CASE("manifest: the router takes the largest recompute ratio of the decode workers",
          "[manifest][chunks]") {
  // The decode worker resolves a request's ratio (for its remote prefill too), so the
  // prefill worker's does not count; with two decode workers the cost model credits chunk
  // hits by the larger one (never more than a worker saves).
  std::string text = minimal;
  text.replace(text.find("actors: [decode]"), 16,
               "actors: [{decode: {recompute_ratio: 0.3}}, {decode: {recompute_ratio: 0.6}}]");
  text.replace(text.find("actors: [prefill]"), 17, "actors: [{prefill: {recompute_ratio: 0.9}}]");
  auto m = ok(parse(text));
  CHECK(to_router_config(m).recompute_ratio == Approx(0.6));
}

TEST_CASE("manifest: a worker's blend policy is read, checked and part of the hash",
          "[manifest][chunks]") {
  auto dflt = ok(parse(minimal));
  for (const auto& n : dflt.nodes)
    for (const auto& a : n.actors)
      if (const auto* w = a.worker()) CHECK(w->blend_policy == "deviation");

  std::string text = minimal;
  text.replace(text.find("actors: [decode]"), 16, "actors: [{decode: {blend_policy: leading}}]");
  auto m = ok(parse(text));
  bool seen = false;
  for (const auto& n : m.nodes)
    for (const auto& a : n.actors)
      if (const auto* d = a.decode()) {
        CHECK(to_decode_config(*d).blend == blend_policy::leading);
        seen = true;
      } else if (const auto* p = a.prefill()) {
        CHECK(to_prefill_config(*p).blend == blend_policy::deviation);
      }
  CHECK(seen);
  CHECK(manifest_hash(m) != manifest_hash(dflt));

  std::string bad = minimal;
  bad.replace(bad.find("actors: [decode]"), 16, "actors: [{decode: {blend_policy: cacheblend}}]");
  auto r = parse(bad);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains("blend_policy") && Catch::Contains("cacheblend") &&
                                    Catch::Contains("deviation") && Catch::Contains("leading"));
}

TEST_CASE("manifest: defaults.weights_hugepages is read, checked, in the hash and the engine spec",
          "[manifest]") {
  auto with = [](const std::string& defaults) { return one_node_with_defaults(defaults); };
  auto dflt = ok(parse(with("{engine: sim}")));
  CHECK(dflt.defaults.weights_hugepages == "auto");
  CHECK(to_engine_spec(dflt, worker_options{}).hugepages == weights_hugepages::auto_);
  auto off = ok(parse(with("{weights_hugepages: off}")));
  CHECK(to_engine_spec(off, worker_options{}).hugepages == weights_hugepages::off);
  CHECK(to_engine_spec(ok(parse(with("{weights_hugepages: on}"))), worker_options{}).hugepages ==
        weights_hugepages::on);
  CHECK(manifest_hash(off) != manifest_hash(dflt));
  // Written out at its default, it is the manifest it was (and hashes the same).
  CHECK(manifest_hash(ok(parse(with("{weights_hugepages: auto}")))) == manifest_hash(dflt));
  for (const char* bad : {"yes", "true", "[on]"}) {
    auto r = parse(with(std::string("{weights_hugepages: ") + bad + "}"));
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("defaults.weights_hugepages") &&
                                      Catch::Contains("on") && Catch::Contains("auto"));
  }
  // A worker has no such option: the model is loaded once per node.
  std::string wrong = minimal;
  wrong.replace(wrong.find("actors: [decode]"), 16, "actors: [{decode: {weights_hugepages: on}}]");
  auto w = parse(wrong);
  REQUIRE_FALSE(w.ok());
  CHECK_THAT(w.error().message, Catch::Contains("unknown key 'weights_hugepages'"));
}

TEST_CASE("manifest: a decode worker's first-token release is read, checked and in the hash",
          "[manifest]") {
  auto dflt = ok(parse(minimal));
  for (const auto& n : dflt.nodes)
    for (const auto& a : n.actors)
      if (const auto* d = a.decode()) {
        CHECK(d->first_token == "prefill");
        CHECK(to_decode_config(*d).first_token == first_token_release::prefill);
      }
  std::string text = minimal;
  text.replace(text.find("actors: [decode]"), 16, "actors: [{decode: {first_token: decode}}]");
  auto m = ok(parse(text));
  bool seen = false;
  for (const auto& n : m.nodes)
    for (const auto& a : n.actors)
      if (const auto* d = a.decode()) {
        CHECK(to_decode_config(*d).first_token == first_token_release::decode);
        seen = true;
      }
  CHECK(seen);
  CHECK(manifest_hash(m) != manifest_hash(dflt));
  // Written out at its default, it is the manifest it was (and hashes the same).
  std::string same = minimal;
  same.replace(same.find("actors: [decode]"), 16, "actors: [{decode: {first_token: prefill}}]");
  CHECK(manifest_hash(ok(parse(same))) == manifest_hash(dflt));

  std::string bad = minimal;
  bad.replace(bad.find("actors: [decode]"), 16, "actors: [{decode: {first_token: router}}]");
  auto r = parse(bad);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains("first_token") && Catch::Contains("router") &&
                                    Catch::Contains("prefill") && Catch::Contains("decode"));
  // A prefill worker has no such option.
  std::string wrong = minimal;
  wrong.replace(wrong.find("actors: [prefill]"), 17, "actors: [{prefill: {first_token: decode}}]");
  auto w = parse(wrong);
  REQUIRE_FALSE(w.ok());
  CHECK_THAT(w.error().message, Catch::Contains("unknown key 'first_token'"));
}
