#pragma once
/// The Cap'n Proto RPC frontend (DESIGN.md §6). It runs its own kj event loop on one
/// thread; a bridge actor carries router replies into that loop through an eventfd inbox.
/// The frontend validates and tokenizes; it holds no routing logic.
#include <cstdint>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "common/result.hpp"
#include "engine/engine.hpp"
#include "engine/tokenizer.hpp"
#include "frontend/frontend_metrics.hpp"

namespace tokenmill {

class api_keys;
class auth_throttle;

struct rpc_server_config {
  std::string host = "127.0.0.1";
  uint16_t port = 7700;                  ///< 0 = any free port (start() says which)
  int stream_window_bytes = 16 * 1024;   ///< SO_SNDBUF of client sockets = token stream window
  uint64_t max_message_bytes = 8 << 20;  ///< larger incoming messages drop the connection
  uint32_t node = 0;                     ///< node index stamped into traces
  /// Set: the bootstrap Gateway answers only login(key) with one of these keys (shared
  /// with the HTTP server; reloaded in place). Null: every call is open.
  std::shared_ptr<const api_keys> keys;
  /// With `keys`: failed logins per client address (shared with the HTTP server); an
  /// address that failed too often is refused unchecked for a while. Null: the server keeps
  /// its own, with the default limits.
  std::shared_ptr<auth_throttle> throttle;
  /// Both set: the port speaks TLS (kj-tls, OpenSSL) with this PEM certificate chain and
  /// private key; a client that does not complete a TLS handshake is dropped.
  std::string tls_cert;
  std::string tls_key;
  /// A client that takes none of its token stream for this long (its sink's write is
  /// not acknowledged: it stopped reading, or never returns from write) has its request
  /// cancelled and the call failed: with the window, this bounds what a stalled client
  /// holds (its request's KV blocks, a decode slot, the undelivered tokens). 0 = no bound.
  double stream_timeout_s = 30;
};

class rpc_server {
 public:
  /// `metrics` (may be null) records every request, as the HTTP server's does.
  rpc_server(caf::actor_system& sys, caf::actor router, caf::actor supervisor,
             std::shared_ptr<const tokenizer> tok, model_info model, rpc_server_config cfg,
             std::shared_ptr<frontend_metrics> metrics = nullptr);
  ~rpc_server();
  rpc_server(const rpc_server&) = delete;
  rpc_server& operator=(const rpc_server&) = delete;

  /// Binds, starts serving on its own thread and returns the bound port.
  result<uint16_t> start();
  /// Cancels requests in flight, closes every connection and joins the thread.
  void stop();

  struct impl;  ///< the kj-thread state (public so that its helpers in the .cpp can name it)

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill
