// Node authentication on loopback with real processes: a cluster with mutual TLS and a
// cluster secret serves, and a node with another CA's certificate, without TLS, with a
// wrong secret, another node's certificate, TLS clients without or with a foreign
// certificate, and a replayed join are refused with a clear log line while the cluster keeps
// serving.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include "actors/protocol.hpp"
#include "actors/supervisor/join_policy.hpp"
#include "actors/type_ids.hpp"
#include "cluster/manifest.hpp"
#include "common/clock.hpp"
#include "harness.hpp"

using namespace tokenmill::testing;
using nlohmann::json;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

const std::vector<std::string> kNodes{"head", "p0", "d0", "d1"};

/// A four-node cluster on loopback (head: router, supervisor, kv_store; p0: prefill; d0, d1:
/// decode), `security` as its security section, launched with `tokenmill launch`.
class secure_cluster {
 public:
  /// `ssh_node`: that node gets `ssh: tester@127.0.0.1` (launch starts it through `ssh`).
  explicit secure_cluster(std::string security, std::string ssh_node = {})
      : security_(std::move(security)), ssh_node_(std::move(ssh_node)) {
    std::set<uint16_t> taken;
    rpc_ = free_listen_port(taken);
    http_ = free_listen_port(taken);
    for (const auto& n : kNodes) {
      port_[n] = free_listen_port(taken);
      http_port_[n] = free_listen_port(taken);
    }
    manifest_ = dir_.file("cluster.yaml");
    write_text(manifest_, yaml(security_));
  }
  ~secure_cluster() {
    if (launch_ && launch_->running()) {
      launch_->signal(SIGTERM);
      launch_->wait(milliseconds(15000));
    }
  }

  /// The manifest with another security section (same nodes and ports).
  std::string yaml(const std::string& security) const {
    std::ostringstream y;
    y << "cluster: sec\n"
      << "model:\n  sim: {decode_step_ms: 2, prefill_us_per_token: 20}\n"
      << "defaults: {engine: sim, block_tokens: 16, kv_transport: inline}\n"
      << "failure: {heartbeat_ms: 100, connection_timeout_ms: 500}\n"
      << "restart: {max: 0}\n"
      << "security: " << security << "\n"
      << "frontend: {node: head, rpc_port: " << rpc_ << ", http_port: " << http_ << "}\n"
      << "nodes:\n";
    for (const auto& n : kNodes) {
      y << "  - name: " << n << "\n    address: 127.0.0.1\n    port: " << port_.at(n) << "\n";
      if (n == ssh_node_) y << "    ssh: tester@127.0.0.1\n";
      if (n != "head") y << "    http_port: " << http_port_.at(n) << "\n";
      y << "    actors: "
        << (n == "head" ? "[router, supervisor, kv_store]"
            : n == "p0" ? "[{prefill: {engine: sim, threads: 1}}]"
                        : "[{decode: {engine: sim, threads: 1, max_batch: 32}}]")
        << "\n";
    }
    return y.str();
  }

  const std::string& dir() const { return dir_.path(); }
  const std::string& manifest() const { return manifest_; }
  uint16_t port(const std::string& node) const { return port_.at(node); }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(rpc_); }
  std::string log(const std::string& node) const {
    return read_text(dir_.file("logs/" + node + ".log"));
  }

  /// `tokenmill launch` until ready; returns the seconds launch reported.
  double launch() {
    launch_ = std::make_unique<process>(std::vector<std::string>{tokenmill_bin(), "--log-level",
                                                                 "info", "launch", manifest_,
                                                                 "--log-dir", dir_.file("logs")});
    auto line = launch_->wait_for_line(" ready after ", milliseconds(30000));
    if (!line) {
      launch_->wait(milliseconds(15000));
      std::string logs;
      for (const auto& n : kNodes)
        logs += "== " + n + "\n" + log(n);
      throw std::runtime_error("launch did not become ready; stdout:\n" + launch_->out() +
                               "\nstderr:\n" + launch_->err() + "\n" + logs);
    }
    std::istringstream in(launch_->out());
    for (std::string l; std::getline(in, l);) {
      auto at = l.find("starting (pid ");
      if (l.rfind("launch: node ", 0) != 0 || at == std::string::npos) continue;
      std::istringstream words(l.substr(13));
      std::string name;
      words >> name;
      pid_[name] = static_cast<pid_t>(std::stol(l.substr(at + 14)));
    }
    return std::stod(line->substr(line->find(" ready after ") + 13));
  }
  process& launcher() { return *launch_; }
  pid_t pid_of(const std::string& node) const { return pid_.at(node); }

  /// SIGKILLs node `name` and waits until the cluster reports its worker down.
  void kill_node(const std::string& name) {
    REQUIRE(pid_.count(name) == 1);
    REQUIRE(::kill(pid_.at(name), SIGKILL) == 0);
    REQUIRE(eventually(
        [&] {
          auto st = status();
          if (!st.is_object()) return false;
          for (const auto& w : st["workers"])
            if (w.value("node", "") == name && !w.value("up", true)) return true;
          return false;
        },
        milliseconds(5000)));
  }

  json status() const {
    auto r = run_tokenmill({"status", "--connect", endpoint(), "--json"}, milliseconds(15000));
    if (r.exit_code != 0) return nullptr;
    return json::parse(r.out, nullptr, false);
  }
  /// One short request through the cluster succeeds.
  bool serves() const {
    auto r = run_tokenmill({"generate", "--connect", endpoint(), "--json", "--token-ids",
                            "--max-tokens", "8", id_prompt(100, 8)},
                           milliseconds(30000));
    return r.exit_code == 0;
  }

  /// `tokenmill node --name d1` with `security` in a copy of the manifest; waits for it to
  /// end (it must not join). Returns its stderr.
  std::string intruder(const std::string& security, const std::string& tag) {
    auto path = dir_.file("intruder-" + tag + ".yaml");
    write_text(path, yaml(security));
    process p({tokenmill_bin(), "--log-level", "info", "node", "--manifest", path, "--name", "d1",
               "--join-timeout", "4"});
    auto code = p.wait(milliseconds(20000));
    INFO("intruder " << tag << " stdout: " << p.out() << "\nstderr: " << p.err());
    REQUIRE(code);
    CHECK(*code != 0);
    CHECK(p.out().find("tokenmill node ready") == std::string::npos);
    return p.err();
  }

 private:
  temp_dir dir_{"tokenmill-security"};
  std::string security_;
  std::string ssh_node_;
  std::string manifest_;
  uint16_t rpc_ = 0, http_ = 0;
  std::map<std::string, uint16_t> port_, http_port_;
  std::map<std::string, pid_t> pid_;
  std::unique_ptr<process> launch_;
};

/// `tokenmill certs init DIR --nodes ...`.
void certs_init(const std::string& dir, const std::string& nodes) {
  auto r = run_tokenmill({"certs", "init", dir, "--nodes", nodes});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
}

bool eventually_in(const std::function<std::string()>& text, const std::string& needle) {
  return eventually([&] { return text().find(needle) != std::string::npos; }, milliseconds(5000));
}

/// A TLS client to 127.0.0.1:port presenting `cert`/`key` (none when empty) that does not
/// check the server: true when the server let it through, i.e. the connection stayed open
/// for a round of reads after the handshake.
bool tls_client_accepted(uint16_t port, const std::string& cert, const std::string& key) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  REQUIRE(ctx);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  if (!cert.empty()) {
    REQUIRE(SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) == 1);
  }
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  bool accepted = false;
  if (SSL_connect(ssl) == 1) {
    // TLS 1.3: the server judges the client's certificate after the client finished; its
    // verdict shows on the first read: closed (refused) or a read timeout (still open).
    char b;
    int n = SSL_read(ssl, &b, 1);
    int err = SSL_get_error(ssl, n);
    accepted = n > 0 || (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK));
  }
  ERR_clear_error();
  SSL_free(ssl);
  ::close(fd);
  SSL_CTX_free(ctx);
  return accepted;
}

}  // namespace

TEST_CASE("a cluster with mutual TLS and a secret serves and refuses nodes that lack either",
          "[integration][security]") {
  secure_cluster c(
      "{tls: {ca: certs/ca.crt, cert: 'certs/{node}.crt', key: 'certs/{node}.key'}, "
      "secret_file: certs/secret}");
  certs_init(c.dir() + "/certs", "head,p0,d0,d1");
  certs_init(c.dir() + "/other", "d1");  // another cluster's CA
  c.launch();
  REQUIRE(c.serves());
  // The nodes' links are TLS: the head's control port talks nothing else.
  CHECK_FALSE(tls_client_accepted(c.port("head"), "", ""));
  c.kill_node("d1");  // frees d1's place for the intruders

  SECTION("a certificate from another CA") {
    auto err = c.intruder(
        "{tls: {ca: other/ca.crt, cert: 'other/{node}.crt', key: 'other/{node}.key'}, "
        "secret_file: certs/secret}",
        "other-ca");
    CHECK_THAT(err, Catch::Contains("could not reach the supervisor") && Catch::Contains("TLS"));
    CHECK(eventually_in([&] { return c.log("head"); }, "control port: closed the connection"));
    CHECK_THAT(c.log("head"), Catch::Contains("refused: the peer"));
  }
  SECTION("no TLS at all (no certificate)") {
    auto err = c.intruder("{secret_file: certs/secret}", "plain");
    CHECK_THAT(err, Catch::Contains("could not reach the supervisor"));
    CHECK(eventually_in([&] { return c.log("head"); }, "not a TLS handshake"));
  }
  SECTION("the right certificate, a wrong secret") {
    write_text(c.dir() + "/wrong-secret", "this is not the cluster's secret\n");
    REQUIRE(::chmod((c.dir() + "/wrong-secret").c_str(), 0600) == 0);
    auto err = c.intruder(
        "{tls: {ca: certs/ca.crt, cert: 'certs/{node}.crt', key: 'certs/{node}.key'}, "
        "secret_file: wrong-secret}",
        "wrong-secret");
    CHECK_THAT(err, Catch::Contains("the supervisor refused the join") &&
                        Catch::Contains("wrong proof of the cluster secret"));
    CHECK(eventually_in([&] { return c.log("head"); },
                        "supervisor: refused the join of node 'd1' (index 3)"));
    CHECK_THAT(c.log("head"), Catch::Contains("wrong proof of the cluster secret"));
  }
  SECTION("the cluster CA's certificate of another node") {
    // d0's own certificate and key are valid for the cluster: TLS lets the intruder in, and
    // the supervisor refuses it as d1 because the certificate is issued for d0.
    auto err = c.intruder(
        "{tls: {ca: certs/ca.crt, cert: certs/d0.crt, key: certs/d0.key}, "
        "secret_file: certs/secret}",
        "other-node-cert");
    CHECK_THAT(err, Catch::Contains("the supervisor refused the join") &&
                        Catch::Contains("issued for 'd0'"));
    CHECK(eventually_in([&] { return c.log("head"); },
                        "supervisor: refused the join of node 'd1' (index 3)"));
    CHECK_THAT(c.log("head"), Catch::Contains("certificate: its certificate is issued for 'd0'"));
  }
  SECTION("TLS clients without a certificate or with another CA's") {
    CHECK_FALSE(tls_client_accepted(c.port("head"), "", ""));
    CHECK(eventually_in([&] { return c.log("head"); }, "presented no certificate"));
    CHECK_FALSE(
        tls_client_accepted(c.port("head"), c.dir() + "/other/d1.crt", c.dir() + "/other/d1.key"));
    CHECK(eventually_in([&] { return c.log("head"); }, "is not accepted"));
  }

  // Whatever was refused, the cluster serves on, d1 stays down (nothing registered), and
  // the real d1 with the right files still joins.
  CHECK(c.serves());
  auto st = c.status();
  REQUIRE(st.is_object());
  for (const auto& w : st["workers"])
    if (w.value("node", "") == "d1") CHECK_FALSE(w.value("up", true));
  process d1({tokenmill_bin(), "node", "--manifest", c.manifest(), "--name", "d1"});
  CHECK(d1.wait_for_line("tokenmill node ready", milliseconds(15000)));
  d1.signal(SIGTERM);
  d1.wait(milliseconds(10000));
  CHECK(c.launcher().running());
}

TEST_CASE("a replayed join is refused and the cluster serves on", "[integration][security]") {
  // One host, no TLS: a join could be recorded off the wire. The test joins as d1 itself
  // (it knows the secret), then sends the very same join again.
  secure_cluster c("{secret_file: certs/secret}");
  certs_init(c.dir() + "/certs", "head,p0,d0,d1");
  c.launch();
  c.kill_node("d1");
  auto m = tokenmill::load_manifest(c.manifest(), {false});
  REQUIRE(m);
  auto secret = tokenmill::secret_bytes(read_text(c.dir() + "/certs/secret"));

  caf::actor_system_config cfg;
  tokenmill::register_types(cfg);
  cfg.load<caf::io::middleman>();
  cfg.set("logger.console", caf::atom("none"));
  cfg.set("middleman.enable-automatic-connections", false);
  {
    caf::actor_system sys{cfg};
    auto remote = sys.middleman().remote_actor("127.0.0.1", c.port("head"));
    REQUIRE(remote);
    caf::scoped_actor self{sys};
    caf::actor sup;
    self->request(*remote, std::chrono::seconds(5), tokenmill::supervisor_atom::value)
        .receive([&](caf::actor s) { sup = std::move(s); }, [](caf::error&) {});
    REQUIRE(sup);
    auto agent = sys.spawn([]() -> caf::behavior {
      return {
          [](tokenmill::ping_atom, int64_t t0) {
            return caf::make_message(t0, tokenmill::now_ns());
          },
          [](const tokenmill::node_peers&) {},
      };
    });
    auto ask = [&](const auto& msg) {
      std::string reply = "no reply";
      self->request(sup, std::chrono::seconds(5), msg)
          .receive([&](const std::string& r) { reply = r; },
                   [&](caf::error& e) { reply = sys.render(e); });
      return reply;
    };
    auto challenge = ask(tokenmill::join_challenge_atom::value);
    REQUIRE(challenge.size() == 2 * tokenmill::join_nonce_bytes);
    tokenmill::join_node j{"d1",      3,     tokenmill::manifest_hash(*m),
                           "sim",     agent, tokenmill::host_clock_id(),
                           challenge, {}};
    j.proof = tokenmill::join_proof(secret, challenge,
                                    tokenmill::join_statement{m->cluster, j.name, j.index,
                                                              j.manifest_hash, j.model, j.host_id});
    CHECK(ask(j).empty());  // the original join
    auto replay = ask(j);
    CHECK_THAT(replay, Catch::Contains("replayed join"));
    CHECK(eventually_in([&] { return c.log("head"); }, "replayed join"));
    CHECK_THAT(c.log("head"), Catch::Contains("supervisor: refused the join of node 'd1'"));
    // A proof made without the secret is refused too, on a fresh challenge.
    auto fresh = ask(tokenmill::join_challenge_atom::value);
    j.challenge = fresh;
    j.proof = tokenmill::join_proof(tokenmill::secret_bytes("guessing the cluster secret"), fresh,
                                    tokenmill::join_statement{m->cluster, j.name, j.index,
                                                              j.manifest_hash, j.model, j.host_id});
    CHECK_THAT(ask(j), Catch::Contains("wrong proof"));
    caf::anon_send_exit(agent, caf::exit_reason::user_shutdown);
  }
  CHECK(c.serves());
  CHECK(c.launcher().running());
}

TEST_CASE("launch creates the certificates of tls: auto and the cluster serves",
          "[integration][security]") {
  secure_cluster c("{tls: auto, secret_file: certs/secret}");
  double ready = c.launch();
  if (std::getenv("TOKENMILL_TEST_TIMINGS"))
    std::fprintf(stderr, "[security timing] launch ready with TLS: %.3f s\n", ready);
  for (const auto& n : kNodes) {
    CHECK(std::filesystem::exists(c.dir() + "/certs/" + n + ".crt"));
    CHECK(std::filesystem::exists(c.dir() + "/certs/" + n + ".key"));
  }
  CHECK_THAT(c.launcher().out(), Catch::Contains("launch: created"));
  CHECK(c.serves());
}

TEST_CASE("launch hands an ssh node its certificate, key and the secret, and nothing else",
          "[integration][security]") {
  // A stand-in for ssh that runs the remote command on this host, with tokenmill on PATH.
  temp_dir bin("tokenmill-fake-ssh");
  write_text(bin.file("ssh"),
             "#!/bin/sh\n# ssh -o BatchMode=yes HOST COMMAND\nshift 3\nexec /bin/sh -c \"$1\"\n");
  REQUIRE(::chmod(bin.file("ssh").c_str(), 0755) == 0);
  std::filesystem::create_symlink(tokenmill_bin(), bin.file("tokenmill"));
  std::string old_path = std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin";
  ::setenv("PATH", (bin.path() + ":" + old_path).c_str(), 1);
  secure_cluster c("{tls: auto, secret_file: certs/secret}", "d1");
  double ready = 0;
  try {
    ready = c.launch();
  } catch (...) {
    ::setenv("PATH", old_path.c_str(), 1);
    throw;
  }
  ::setenv("PATH", old_path.c_str(), 1);
  CHECK(ready > 0);
  CHECK(c.serves());
  // d1 runs from the folder its archive was unpacked into, with only its own files.
  auto cmd = read_text("/proc/" + std::to_string(c.pid_of("d1")) + "/cmdline");
  for (auto& ch : cmd)
    if (ch == '\0') ch = ' ';
  INFO(cmd);
  auto at = cmd.find("--manifest /tmp/tokenmill-d1-");
  REQUIRE(at != std::string::npos);
  auto manifest = cmd.substr(at + 11, cmd.find(' ', at + 11) - (at + 11));
  auto dir = std::filesystem::path(manifest).parent_path();
  CHECK(std::filesystem::exists(dir / "certs/d1.key"));
  CHECK(std::filesystem::exists(dir / "certs/d1.crt"));
  CHECK(std::filesystem::exists(dir / "certs/ca.crt"));
  CHECK(std::filesystem::exists(dir / "certs/secret"));
  CHECK_FALSE(std::filesystem::exists(dir / "certs/ca.key"));
  CHECK_FALSE(std::filesystem::exists(dir / "certs/head.key"));
  CHECK((std::filesystem::status(dir / "certs/d1.key").permissions() &
         std::filesystem::perms::others_read) == std::filesystem::perms::none);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}
