#pragma once
/// The OpenAI-compatible HTTP frontend (DESIGN.md §6), Boost.Beast on one Asio thread:
/// POST /v1/completions, /v1/chat/completions and /v1/responses (SSE streaming or one
/// JSON body), GET and DELETE /v1/responses/{id}, GET /v1/models, /health, /ready,
/// /metrics, and POST /tokenize. Like the RPC server it validates and tokenizes, sends the
/// request to the router, and turns the router's token chunks into text; a bridge actor
/// posts them onto the Asio thread. The protocol rules (bodies, errors, SSE) live in
/// openai.hpp and responses.hpp.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "common/result.hpp"
#include "engine/engine.hpp"
#include "engine/tokenizer.hpp"
#include "frontend/frontend_metrics.hpp"
#include "frontend/openai.hpp"
#include "frontend/response_store.hpp"

namespace tokenmill {

class api_keys;
class auth_throttle;

struct http_server_config {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;                  ///< 0 = any free port (start() says which)
  uint32_t node = 0;                     ///< node index stamped into traces
  uint64_t max_body_bytes = 4 << 20;     ///< larger request bodies get 413
  uint32_t max_header_bytes = 16 << 10;  ///< larger request headers get 431
  /// Set: /v1/* and /tokenize need "Authorization: Bearer KEY" with one of these keys
  /// (shared with the RPC server; reloaded in place). Null: open.
  std::shared_ptr<const api_keys> keys;
  bool protect_metrics = false;  ///< with `keys`: /metrics and /debug/* need a key too
  /// With `keys`: failed key attempts per client address (shared with the RPC server). Null:
  /// the server keeps its own, with the default limits.
  std::shared_ptr<auth_throttle> throttle;
  /// Both set: the port speaks TLS (Asio SSL, OpenSSL; TLS 1.2 and later) with this PEM
  /// certificate chain and private key; a client that fails the handshake is dropped.
  std::string tls_cert;
  std::string tls_key;
  openai::chat_format chat_format = openai::chat_format::chatml;
  /// Slow and hostile clients: every wait on a client is bounded, and so is what it can
  /// make the server hold (at most max_connections × (max_header_bytes + max_body_bytes)
  /// of request bytes; a response waits in the socket's buffer and for at most
  /// write_timeout_s, and a stream's undelivered tokens are at most its max_tokens).
  double idle_timeout_s = 60;       ///< a keep-alive connection idle this long is closed
  double header_timeout_s = 10;     ///< from a request's first byte to the end of its headers
  double body_timeout_s = 60;       ///< to read a request body once its headers are in
  double write_timeout_s = 30;      ///< a client that reads nothing this long is dropped
  uint32_t max_connections = 1024;  ///< more connections are closed as soon as accepted
  /// SO_SNDBUF of client sockets (0 = the kernel's autotuning, up to tcp_wmem's maximum):
  /// what a client that stops reading leaves queued in the kernel, before its writes wait
  /// and write_timeout_s runs.
  int send_buffer_bytes = 64 << 10;
  /// Node-level series that are not the workers' (the KV transport's), refreshed into the
  /// registry per /metrics scrape; may be empty.
  std::function<void(metrics::registry&)> collect_node_metrics;
  /// Bounds of the stored /v1/responses responses (previous_response_id, GET and DELETE
  /// /v1/responses/{id}); they live in this server's memory only.
  response_store::limits responses;
};

/// The chat format for `option` ("auto", "chatml", "llama3", "mistral"): "auto" recognises
/// the model's Jinja template and falls back to chatml (as llama.cpp does).
result<openai::chat_format> choose_chat_format(std::string_view option,
                                               std::string_view model_template);

class http_server {
 public:
  /// `metrics` is the node's (shared with the RPC server); /metrics exposes its registry
  /// plus every worker's gauges from the supervisor's status.
  http_server(caf::actor_system& sys, caf::actor router, caf::actor supervisor,
              std::shared_ptr<const tokenizer> tok, model_info model, http_server_config cfg,
              std::shared_ptr<frontend_metrics> metrics);
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// Binds, starts serving on its own thread and returns the bound port.
  result<uint16_t> start();
  /// Cancels requests in flight, closes every connection and joins the thread.
  void stop();

  struct core;  ///< state shared by the Asio thread and the bridge actor

 private:
  std::shared_ptr<core> core_;
};

}  // namespace tokenmill
