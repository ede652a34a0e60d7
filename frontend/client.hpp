#pragma once
/// The C++ client library for tokenmill's Cap'n Proto API. Synchronous: each call runs
/// the client's own event loop until it completes. Not thread-safe; use one client per
/// thread. No CAF here.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/api_types.hpp"
#include "common/result.hpp"

namespace kj {
template <typename T>
class Promise;
}  // namespace kj

namespace tokenmill {

/// Parses "HOST:PORT" (PORT 1..65535).
result<std::pair<std::string, uint16_t>> parse_endpoint(const std::string& s);

/// A chunk of streamed tokens, as received.
struct client_chunk {
  uint32_t first_index = 0;
  std::vector<token_id> ids;
  std::string text;
  int64_t recv_ns = 0;                   ///< client steady clock
  std::vector<token_logprobs> logprobs;  ///< one per id when asked for (top_logprobs >= 0)
};

/// A finished generate call, measured at the client.
struct client_result {
  generation_summary server;             ///< as the server reported it
  std::vector<token_id> tokens;          ///< the completion's token ids
  std::vector<token_logprobs> logprobs;  ///< one per token when asked for, else empty
  std::string text;                      ///< the completion's text
  int64_t sent_ns = 0;                   ///< client clock: call sent
  int64_t first_token_ns = 0;            ///< client clock: first chunk received (0 if none)
  int64_t done_ns = 0;                   ///< client clock: call returned
  double ttft_ms = 0;                    ///< first_token_ns - sent_ns
  std::vector<stage_ms> stages;  ///< full breakdown, client_to_frontend .. frontend_to_client
  std::vector<double> itl_ms;    ///< gap before each token after the first (0 inside a chunk)
};

/// How a client reaches a gateway beyond host and port.
struct client_options {
  /// Sent with login() when non-empty (a server with API keys needs one; a server without
  /// takes any).
  std::string api_key;
  /// Non-empty: the port speaks TLS; the server's certificate must chain to this PEM CA
  /// file and name the host connected to.
  std::string tls_ca;
};

/// How the server words a refused API key ("unauthenticated: why"), in RPC errors.
inline constexpr std::string_view unauthenticated_prefix = "unauthenticated: ";
/// How the server words a login refused because its address failed too often ("overloaded:
/// ... retry in N s"); the client library maps it to errc::overloaded.
inline constexpr std::string_view overloaded_prefix = "overloaded: ";

/// True when `e` is the server refusing the API key (or its absence): errc::unauthenticated
/// (the client maps the server's "unauthenticated: " message to it).
bool is_unauthenticated(const error_info& e);

/// `flag` when given, else $TOKENMILL_API_KEY, else empty: the key the command-line clients
/// send.
std::string api_key_or_env(const std::string& flag);

class client {
 public:
  /// Connects and checks that a tokenmill gateway answers within `timeout_s`. A refused
  /// key (or none where one is needed) is an error for which is_unauthenticated() holds.
  static result<std::unique_ptr<client>> connect(const std::string& host, uint16_t port,
                                                 double timeout_s = 10,
                                                 const client_options& opts = {});
  ~client();

  /// Streams a completion; `on_chunk` runs for each chunk as it arrives. A request the
  /// server refused or failed is an error (with the server's code and message).
  result<client_result> generate(generate_params p,
                                 const std::function<void(const client_chunk&)>& on_chunk,
                                 double timeout_s = 600);
  /// One call for generate_concurrently: its parameters, the chunk callback, and what
  /// runs with its outcome.
  struct call {
    generate_params params;
    std::function<void(const client_chunk&)> on_chunk;
    std::function<void(result<client_result>)> done;
  };
  /// Streams on every client of `clients` at once, all connected on this thread, on the
  /// thread's one event loop: client k runs the calls next(k) hands it one after another
  /// until it returns none. One thread takes every stream's chunks as the loop reads them,
  /// so each chunk's recv_ns is stamped without waiting for a thread of its own to wake.
  /// Returns when every client has run out of calls; failures go to each call's `done`.
  static void generate_concurrently(const std::vector<client*>& clients,
                                    const std::function<std::optional<call>(size_t)>& next,
                                    double timeout_s = 600);
  result<std::vector<token_id>> tokenize(const std::string& text, bool add_bos = true);
  result<cluster_status> status(double timeout_s = 10);
  /// Drains node `node` (tokenmill drain): waits up to `timeout_s` for the supervisor's
  /// report. The report's own error (an unknown node, …) is in the summary. With `resume`
  /// the node's drained workers go back into service instead.
  result<drain_summary> drain(const std::string& node, double timeout_s = 600, bool resume = false);
  /// The model the gateway serves (fetched at connect time).
  const model_summary& model() const { return model_; }

 private:
  struct impl;
  explicit client(std::unique_ptr<impl> i);
  /// generate() as a promise on this thread's event loop; its failures are error values.
  kj::Promise<result<client_result>> start_generate(
      generate_params p, std::function<void(const client_chunk&)> on_chunk, double timeout_s);
  std::unique_ptr<impl> impl_;
  model_summary model_;
};

}  // namespace tokenmill
