#include "harness.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <thread>
#include <tuple>

namespace tokenmill::testing {

std::string tokenmill_bin() {
  return TOKENMILL_BIN;
}

run_result run_tokenmill(const std::vector<std::string>& args, milliseconds timeout) {
  std::vector<std::string> argv{tokenmill_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, timeout);
}

nlohmann::json last_json_line(const std::string& out) {
  auto end = out.find_last_not_of("\r\n");
  if (end == std::string::npos) return nullptr;
  auto begin = out.rfind('\n', end);
  begin = begin == std::string::npos ? 0 : begin + 1;
  return nlohmann::json::parse(out.substr(begin, end + 1 - begin), nullptr, false);
}

bool eventually(const std::function<bool()>& pred, milliseconds timeout, milliseconds interval) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
}

uint16_t unused_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("bind() failed");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

uint16_t free_listen_port(std::set<uint16_t>& taken) {
  int lo = 32768, hi = 60999;
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  range >> lo >> hi;
  // [first, last]: under the ephemeral range when there is room, else above it.
  int first = 20000, last = lo - 1;
  if (last - first < 1000) first = hi + 1, last = 65535;
  static std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> pick(first, last);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    auto port = static_cast<uint16_t>(pick(rng));
    if (taken.count(port)) continue;
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) continue;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    if (free) {
      taken.insert(port);
      return port;
    }
  }
  throw std::runtime_error("no free port found");
}

server::server(const options& overrides) {
  options opts{{"--engine", "sim"},
               {"--rpc-port", "0"},
               {"--http-port", "0"},
               {"--sim-decode-step-ms", "1"},
               {"--sim-prefill-us-per-token", "10"}};
  for (const auto& [k, v] : overrides)
    opts[k] = v;
  std::vector<std::string> argv{tokenmill_bin(), "serve"};
  for (const auto& [k, v] : opts) {
    argv.push_back(k);
    if (!v.empty()) argv.push_back(v);
  }
  proc_ = std::make_unique<process>(argv);
  auto line = proc_->wait_for_line("tokenmill ready:", milliseconds(20000));
  if (!line) {
    proc_->kill();
    throw std::runtime_error("tokenmill serve did not become ready; stdout: " + proc_->out() +
                             " stderr: " + proc_->err());
  }
  const std::string key = "rpc=127.0.0.1:";
  auto at = line->find(key);
  if (at == std::string::npos) throw std::runtime_error("no rpc= in ready line: " + *line);
  port_ = static_cast<uint16_t>(std::stoul(line->substr(at + key.size())));
  if (port_ == 0) throw std::runtime_error("ready line names port 0: " + *line);
  const std::string hkey = "http=127.0.0.1:";
  if (auto h = line->find(hkey); h != std::string::npos)
    http_port_ = static_cast<uint16_t>(std::stoul(line->substr(h + hkey.size())));
}

server::~server() {
  if (proc_ && proc_->running()) {
    proc_->signal(SIGTERM);
    proc_->wait(milliseconds(10000));  // kills it on timeout
  }
}

std::string server::endpoint() const {
  return "127.0.0.1:" + std::to_string(port_);
}

std::optional<int> server::stop(int sig, milliseconds timeout) {
  proc_->signal(sig);
  return proc_->wait(timeout);
}

std::vector<std::string> server::generate_argv(const std::vector<std::string>& args) const {
  std::vector<std::string> argv{tokenmill_bin(), "generate", "--connect", endpoint()};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

run_result server::generate(const std::vector<std::string>& args, milliseconds timeout) const {
  return run(generate_argv(args), timeout);
}

nlohmann::json server::status() const {
  auto r = run_tokenmill({"status", "--connect", endpoint(), "--json"}, milliseconds(15000));
  if (r.exit_code != 0) return nullptr;
  return nlohmann::json::parse(r.out, nullptr, false);
}

bool workers_idle(const nlohmann::json& status) {
  if (!status.is_object() || !status.contains("workers")) return false;
  for (const auto& w : status["workers"]) {
    if (w.value("kv_used", -1) != 0) return false;
    auto role = w.value("role", "");
    if ((role == "prefill" || role == "decode") && w.value("running", -1) != 0) return false;
  }
  return true;
}

nlohmann::json worker(const nlohmann::json& status, const std::string& role) {
  if (!status.is_object() || !status.contains("workers")) return nullptr;
  for (const auto& w : status["workers"])
    if (w.value("role", "") == role) return w;
  return nullptr;
}

temp_dir::temp_dir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string id_prompt(int first, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += std::to_string(first + i);
  }
  return s;
}

}  // namespace tokenmill::testing
