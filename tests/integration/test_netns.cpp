// A cluster across three network namespaces (scripts/netns-3host.sh): one generate end to
// end, and a cut link that must fail the streaming client. Needs root and `ip netns`; the
// tests skip (with a WARN saying why) where either is missing.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <sstream>

#include "harness.hpp"
#include "process.hpp"
#include "tests/skip.hpp"

using namespace tokenmill::testing;

namespace {

const char* const netns_names[] = {"tm-h0", "tm-p0", "tm-d0", "tm-br"};

/// The `ip` executable, or "" when it is not installed.
std::string ip_path() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (access(p, X_OK) == 0) return p;
  return "";
}

/// Why network namespaces cannot be used here, or "" when they can. Probes by creating
/// and deleting a uniquely named namespace.
std::string netns_unavailable() {
  if (geteuid() != 0) return "not root (network namespaces need CAP_SYS_ADMIN)";
  auto ip = ip_path();
  if (ip.empty()) return "the 'ip' command (iproute2) is not installed";
  static std::atomic<int> counter{0};
  std::string probe = "tm-test-probe-" + std::to_string(getpid()) + "-" + std::to_string(++counter);
  auto add = run({ip, "netns", "add", probe}, milliseconds(10000));
  if (add.exit_code != 0) return "'ip netns add " + probe + "' failed: " + add.err;
  run({ip, "netns", "del", probe}, milliseconds(10000));
  return "";
}

/// The namespaces of netns-3host.sh that still exist.
std::string leftover_namespaces() {
  auto list = run({ip_path(), "netns", "list"}, milliseconds(10000));
  std::string left;
  std::istringstream in(list.out);
  for (std::string line; std::getline(in, line);)
    for (const char* ns : netns_names)
      if (line.rfind(ns, 0) == 0 &&
          (line.size() == std::string(ns).size() || line[std::string(ns).size()] == ' '))
        left += std::string(ns) + " ";
  return left;
}

/// Last resort when the script could not tear down (it was killed): end what runs in its
/// namespaces (only it starts processes there) and delete them.
void remove_leftovers() {
  auto ip = ip_path();
  for (const char* ns : netns_names) {
    auto pids = run({ip, "netns", "pids", ns}, milliseconds(10000));
    std::istringstream in(pids.out);
    for (pid_t pid; in >> pid;)
      ::kill(pid, SIGKILL);
    run({ip, "netns", "del", ns}, milliseconds(10000));
  }
}

/// Runs scripts/netns-3host.sh ARGS with TOKENMILL_BIN set to the binary under test. On
/// a timeout it is sent SIGTERM first, so that its trap still deletes the namespaces.
run_result run_netns_script(const std::vector<std::string>& args, milliseconds timeout) {
  // Status polls every 100 ms (the script's default is 20): each poll is a new process, and
  // dozens of them starting at once on two cores delayed every reply by seconds.
  std::vector<std::string> argv = {"/usr/bin/env", "TOKENMILL_BIN=" + tokenmill_bin(),
                                   "TM_POLL_MS=100",
                                   std::string(TOKENMILL_SOURCE_DIR) + "/scripts/netns-3host.sh"};
  argv.insert(argv.end(), args.begin(), args.end());
  process p(argv);
  run_result r;
  // The script's last line, printed by its teardown once the namespaces are gone (an early
  // failure ends without it, closing stdout).
  auto start = std::chrono::steady_clock::now();
  bool finished = p.wait_for_line("netns-3host: namespaces deleted", timeout).has_value();
  if (!finished && std::chrono::steady_clock::now() - start >= timeout) {
    p.signal(SIGTERM);
    r.timed_out = true;
  }
  auto code = p.wait(milliseconds(20000));
  r.exit_code = code ? *code : -1;
  r.out = p.out();
  r.err = p.err();
  return r;
}

/// The value of `key=` on the script's CUT_RESULT line, or "" when absent.
std::string cut_field(const std::string& out, const std::string& key) {
  auto line_at = out.find("CUT_RESULT ");
  if (line_at == std::string::npos) return "";
  auto line = out.substr(line_at, out.find('\n', line_at) - line_at);
  auto at = line.find(" " + key + "=");
  if (at == std::string::npos) return "";
  at += key.size() + 2;
  return line.substr(at, line.find(' ', at) - at);
}

}  // namespace

TEST_CASE("netns: three nodes in three network namespaces serve a generate",
          "[integration][netns]") {
  if (auto why = netns_unavailable(); !why.empty()) TM_SKIP(why);
  auto r = run_netns_script({"--once"}, milliseconds(60000));
  INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("netns-3host: cluster netns-3host ready after") != std::string::npos);
  CHECK(r.out.find("netns-3host: completion received: 16 tokens, finish: length") !=
        std::string::npos);
  auto left = leftover_namespaces();
  CHECK(left.empty());
  if (!left.empty()) remove_leftovers();
}

TEST_CASE("netns: cutting the decode node's link fails the streaming client within 5 s",
          "[integration][netns]") {
  if (auto why = netns_unavailable(); !why.empty()) TM_SKIP(why);
  auto r = run_netns_script({"--cut", "--once"}, milliseconds(90000));
  INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code == 0);
  auto client_ms = cut_field(r.out, "client_error_ms");
  auto client_rc = cut_field(r.out, "client_rc");
  auto status_ms = cut_field(r.out, "status_down_ms");
  INFO("client_error_ms=" << client_ms << " client_rc=" << client_rc
                          << " status_down_ms=" << status_ms);
  REQUIRE_FALSE(client_ms.empty());
  REQUIRE(client_ms != "none");
  CHECK(std::strtod(client_ms.c_str(), nullptr) < 5000.0);
  CHECK(client_rc != "0");
  CHECK(client_rc != "none");
  // The client's error names the failed decode worker.
  CHECK(r.out.find("worker_failed") != std::string::npos);
  REQUIRE(status_ms != "none");
  CHECK(std::strtod(status_ms.c_str(), nullptr) < 5000.0);
  auto left = leftover_namespaces();
  CHECK(left.empty());
  if (!left.empty()) remove_leftovers();
}
