#pragma once
/// Helpers for the integration tests: a `tokenmill serve` child on a free port, the
/// `tokenmill` CLI run to completion, and bounded polling.
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "process.hpp"

namespace tokenmill::testing {

/// Path of the tokenmill executable under test.
std::string tokenmill_bin();

/// Runs `tokenmill ARGS...` to completion (bounded by `timeout`).
run_result run_tokenmill(const std::vector<std::string>& args,
                         milliseconds timeout = milliseconds(30000));

/// The last non-empty line of `out`, parsed as JSON (null when it is not JSON).
nlohmann::json last_json_line(const std::string& out);

/// Calls `pred` every `interval` until it returns true or `timeout` passes; returns the
/// last result.
bool eventually(const std::function<bool()>& pred, milliseconds timeout,
                milliseconds interval = milliseconds(50));

/// A free port on 127.0.0.1 below the kernel's ephemeral range (above it when there is
/// no room), not in `taken`, which gets it. unused_port() hands out ephemeral ports, and
/// under load one of them was sometimes taken, between the test choosing it and a node
/// binding it, as the source port of some connection.
uint16_t free_listen_port(std::set<uint16_t>& taken);

/// A TCP port on 127.0.0.1 that nothing listens on (bound and released just now).
uint16_t unused_port();

/// `tokenmill serve --engine sim --rpc-port 0` with fast sim timings by default. Options
/// are flag -> value ("" for a bare flag); the caller's replace the defaults.
class server {
 public:
  using options = std::map<std::string, std::string>;
  /// Starts the server and waits (bounded) for its ready line; throws std::runtime_error
  /// with its output when it does not become ready.
  explicit server(const options& overrides);
  server() : server(options{}) {}
  server(std::initializer_list<options::value_type> overrides) : server(options(overrides)) {}
  ~server();

  uint16_t port() const { return port_; }
  /// The OpenAI HTTP API's port (0 when the server runs with --no-http).
  uint16_t http_port() const { return http_port_; }
  /// "127.0.0.1:PORT"
  std::string endpoint() const;
  process& proc() { return *proc_; }

  /// Sends `sig` and waits up to `timeout` for exit; the exit code, or nothing when it
  /// had to be killed.
  std::optional<int> stop(int sig, milliseconds timeout = milliseconds(10000));

  /// `tokenmill generate --connect THIS ARGS...` run to completion.
  run_result generate(const std::vector<std::string>& args,
                      milliseconds timeout = milliseconds(30000)) const;
  /// `tokenmill status --connect THIS --json`, parsed; null when it failed.
  nlohmann::json status() const;
  /// Argv of `tokenmill generate --connect THIS ARGS...`, for a background child.
  std::vector<std::string> generate_argv(const std::vector<std::string>& args) const;

 private:
  std::unique_ptr<process> proc_;
  uint16_t port_ = 0;
  uint16_t http_port_ = 0;
};

/// True when no worker in `status` holds a KV block and no prefill or decode worker runs
/// anything.
bool workers_idle(const nlohmann::json& status);

/// The first worker of `role` in `status` (null when there is none).
nlohmann::json worker(const nlohmann::json& status, const std::string& role);

/// A new folder under /tmp ("/tmp/PREFIX-XXXXXX"), removed with everything in it when
/// the test ends, passed or failed.
class temp_dir {
 public:
  explicit temp_dir(const std::string& prefix = "tokenmill-test");
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const { return path_; }
  /// path() + "/" + name
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Space-separated "first first+1 ... first+n-1", for --token-ids prompts.
std::string id_prompt(int first, int n);

}  // namespace tokenmill::testing
