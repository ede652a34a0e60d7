#pragma once
/// The HTTP server's state shared by the Asio thread and the bridge actor: one
/// http_server::core per server. Internal to http_server.cpp (connections, routing,
/// lifecycle), http_generate.cpp (generation and SSE streaming) and http_responses.cpp
/// (/v1/responses, which shares the sequence and event-stream plumbing below); nothing
/// else includes it.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <caf/all.hpp>

#include "actors/protocol.hpp"
#include "common/clock.hpp"
#include "frontend/auth_throttle.hpp"
#include "frontend/completion_text.hpp"
#include "frontend/http_server.hpp"
#include "frontend/response_store.hpp"
#include "frontend/validate.hpp"

namespace tokenmill {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;

namespace http_detail {

/// One generate request between the router and its HTTP connection (Asio thread only).
struct gen_state {
  request_id id = 0;
  std::vector<token_id> pending;                 ///< tokens received, not yet turned into text
  std::vector<token_logprobs> pending_logprobs;  ///< theirs, when the request asked
  std::optional<request_summary> summary;
  completion_text text;
  /// Cancelled whenever something arrives for the request; shared by the sequences of one
  /// HTTP request (n > 1, a list of prompts), whose coroutine waits on it.
  std::shared_ptr<asio::steady_timer> wake;
  bool disconnected = false;
  bool cancel_sent = false;
  int64_t first_sent_ns = 0;
  int64_t last_token_ns = 0;
  gen_state(std::shared_ptr<asio::steady_timer> w, std::shared_ptr<const tokenizer> tok,
            std::vector<std::string> stops)
      : text(std::move(tok), std::move(stops)), wake(std::move(w)) {}
};

/// A status query waiting for the supervisor's answer (Asio thread only).
struct status_wait {
  std::optional<cluster_status> status;
  std::string error;
  bool done = false;
  asio::steady_timer wake;
  explicit status_wait(asio::io_context& io) : wake(io, asio::steady_timer::time_point::max()) {}
};

using request_t = http::request<http::string_body>;

/// Waits until the client closes its end (or sends more bytes); a close marks every
/// sequence of `gs` (one HTTP request's) disconnected and wakes its coroutine
/// (http_generate.cpp).
awaitable<void> watch_disconnect(std::shared_ptr<beast::tcp_stream> stream,
                                 std::vector<std::shared_ptr<gen_state>> gs);

/// The error reply of a request that failed before anything was sent: its own status, and
/// for overloaded (429) a Retry-After of `retry_after_ms` in whole seconds, at least 1.
inline openai::api_error failure_error(errc code, std::string message, uint32_t retry_after_ms) {
  auto err = openai::from_errc(code, std::move(message));
  if (code == errc::overloaded)
    err.retry_after_s = std::max<uint32_t>(1, (retry_after_ms + 999) / 1000);
  return err;
}

/// A connection of a TLS port (http_server_config::tls_cert).
using tls_stream = beast::ssl_stream<beast::tcp_stream>;

}  // namespace http_detail

struct http_server::core {
  using request_t = http_detail::request_t;

  // Declared first, destroyed last: everything below that holds Asio objects (timers in
  // gen_state, the acceptor) goes before it.
  asio::io_context io{1};
  caf::actor_system& sys;
  caf::actor router;
  caf::actor supervisor;
  std::shared_ptr<const tokenizer> tok;
  model_info model;
  http_server_config cfg;
  std::shared_ptr<frontend_metrics> metrics;
  openai::request_context ctx;
  caf::actor bridge;
  std::optional<tcp::acceptor> acceptor;
  std::optional<asio::ssl::context> tls;  ///< set: every connection is TLS
  std::thread thread;
  std::unordered_map<request_id, std::shared_ptr<http_detail::gen_state>> gens;
  std::unordered_map<uint64_t, std::shared_ptr<http_detail::status_wait>> status_calls;
  /// Every connection's TCP layer (of a TLS stream too), for closing them at stop.
  std::vector<std::weak_ptr<beast::tcp_stream>> streams;
  /// Responses stored for previous_response_id and GET/DELETE /v1/responses/{id}.
  response_store stored_responses;
  /// Response and message ids ("resp_…"): random, so that one client cannot guess another's.
  std::mt19937_64 response_ids{std::random_device{}()};
  uint64_t next_id = 0;
  uint64_t next_call = 0;
  uint32_t connections = 0;  ///< open sessions (cfg.max_connections bounds them)
  uint64_t connections_refused = 0;
  bool stopping = false;

  core(caf::actor_system& s, caf::actor r, caf::actor sup, std::shared_ptr<const tokenizer> t,
       model_info m, http_server_config c, std::shared_ptr<frontend_metrics> mx)
      : sys(s),
        router(std::move(r)),
        supervisor(std::move(sup)),
        tok(std::move(t)),
        model(std::move(m)),
        cfg(std::move(c)),
        metrics(std::move(mx)),
        stored_responses(cfg.responses) {
    ctx.served_model = model.name;
    ctx.format = cfg.chat_format;
    if (cfg.keys && !cfg.throttle) cfg.throttle = std::make_shared<auth_throttle>();
    metrics->log().set_block_layout(model.layout.block_tokens, model.layout.block_bytes());
  }

  // ------------------------------------------------------------ from the bridge actor
  void on_chunk(token_chunk& c) {
    auto it = gens.find(c.id);
    if (it == gens.end()) return;  // cancelled meanwhile
    auto& g = *it->second;
    if (g.text.stopped()) return;  // tokens after a stop string are dropped
    auto t = now_ns();
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      if (g.last_token_ns != 0) metrics->token_gap((t - g.last_token_ns) / 1e9);
      g.last_token_ns = t;
    }
    g.pending.insert(g.pending.end(), c.tokens.begin(), c.tokens.end());
    g.pending_logprobs.insert(g.pending_logprobs.end(), std::make_move_iterator(c.logprobs.begin()),
                              std::make_move_iterator(c.logprobs.end()));
    g.wake->cancel();
  }
  void on_summary(request_summary& s) {
    auto it = gens.find(s.id);
    if (it == gens.end()) return;
    it->second->summary = std::move(s);
    it->second->wake->cancel();
  }
  void on_status(uint64_t call, result<cluster_status>& st) {
    auto it = status_calls.find(call);
    if (it == status_calls.end()) return;
    if (st)
      it->second->status = std::move(*st);
    else
      it->second->error = st.error().message;
    it->second->done = true;
    it->second->wake.cancel();
  }

  void cancel(http_detail::gen_state& g) {
    if (g.cancel_sent || g.summary) return;
    g.cancel_sent = true;
    caf::anon_send(router, cancel_request{g.id});
  }

  awaitable<std::optional<cluster_status>> query_status(std::string& error) {
    auto call = ++next_call;
    auto w = std::make_shared<http_detail::status_wait>(io);
    status_calls.emplace(call, w);
    caf::anon_send(bridge, status_atom::value, call);
    while (!w->done && !stopping) {
      beast::error_code ec;
      co_await w->wake.async_wait(asio::redirect_error(use_awaitable, ec));
    }
    status_calls.erase(call);
    error = w->done ? w->error : "server stopping";
    co_return std::move(w->status);
  }

  // ------------------------------------------------ sequences and event streams (Asio thread)
  /// Sends one sequence of `v` to the router, sampling with seed + `seed_offset`, and
  /// registers it; its chunks and summary wake `wake` (http_generate.cpp).
  std::shared_ptr<http_detail::gen_state> submit(const std::shared_ptr<asio::steady_timer>& wake,
                                                 const validated_request& v,
                                                 uint64_t seed_offset = 0);
  /// A sequence that will not finish (its client went, a sibling failed, the server stops):
  /// cancelled at the router if it still runs, counted cancelled after the time since
  /// `arrived` (ns), and forgotten (http_generate.cpp).
  void drop(http_detail::gen_state& g, int64_t arrived);

  /// Watches the connection under `stream` for its client closing it (see
  /// http_detail::watch_disconnect).
  template <class Stream>
  void watch_disconnect(Stream& stream, std::vector<std::shared_ptr<http_detail::gen_state>> gs) {
    // The stream is owned by the session; the watcher needs a shared owner to outlive it.
    for (auto& w : streams)
      if (auto s = w.lock(); s && s.get() == &beast::get_lowest_layer(stream)) {
        asio::co_spawn(io, http_detail::watch_disconnect(std::move(s), std::move(gs)),
                       asio::detached);
        return;
      }
  }

  /// Writes `data` to an event-stream response, after its head (text/event-stream, chunked
  /// on HTTP/1.1) when `headers_sent` is false; each write is bounded by
  /// cfg.write_timeout_s. False when a write failed.
  template <class Stream>
  awaitable<bool> write_events(Stream& stream, const request_t& req, bool& headers_sent,
                               std::string data) {
    const bool chunked = req.version() >= 11;
    beast::error_code ec;
    beast::get_lowest_layer(stream).expires_after(
        std::chrono::milliseconds(static_cast<int64_t>(cfg.write_timeout_s * 1e3)));
    if (!headers_sent) {
      http::response<http::empty_body> res{http::status::ok, req.version()};
      res.set(http::field::server, "tokenmill");
      res.set(http::field::content_type, "text/event-stream");
      res.set(http::field::cache_control, "no-cache");
      res.keep_alive(req.keep_alive() && chunked);
      if (chunked) res.chunked(true);
      http::response_serializer<http::empty_body> sr{res};
      co_await http::async_write_header(stream, sr, asio::redirect_error(use_awaitable, ec));
      if (ec) co_return false;
      headers_sent = true;
    }
    if (data.empty()) co_return true;
    if (chunked) {
      auto chunk = http::make_chunk(asio::buffer(data));
      co_await asio::async_write(stream, chunk, asio::redirect_error(use_awaitable, ec));
    } else {
      co_await asio::async_write(stream, asio::buffer(data),
                                 asio::redirect_error(use_awaitable, ec));
    }
    co_return !ec;
  }

  /// Ends an event-stream response that write_events began; true when the connection may
  /// serve another request (HTTP/1.1, keep-alive, the last chunk written).
  template <class Stream>
  awaitable<bool> end_events(Stream& stream, const request_t& req) {
    if (req.version() < 11) co_return false;  // not chunked: the close ends the body
    beast::error_code ec;
    auto last = http::make_chunk_last();
    co_await asio::async_write(stream, last, asio::redirect_error(use_awaitable, ec));
    co_return !ec && req.keep_alive();
  }

  awaitable<void> accept_loop();
  /// A TLS connection: the handshake (bounded by idle_timeout_s), then session().
  awaitable<void> tls_session(std::shared_ptr<http_detail::tls_stream> stream);
  /// Serves requests on `stream` (beast::tcp_stream or http_detail::tls_stream) until the
  /// client goes or an error ends the connection.
  template <class Stream>
  awaitable<void> session(std::shared_ptr<Stream> stream);
  template <class Stream>
  awaitable<bool> route(Stream& stream, request_t& req);
  template <class Stream>
  awaitable<bool> generate(Stream& stream, request_t& req, openai::endpoint kind);
  /// POST /v1/responses, and GET or DELETE /v1/responses/{id} (http_responses.cpp).
  template <class Stream>
  awaitable<bool> responses_api(Stream& stream, request_t& req, std::string_view path);
  template <class Stream>
  awaitable<bool> reply(Stream& stream, const request_t& req, http::status status, std::string body,
                        std::string_view content_type = "application/json", bool close = false,
                        uint32_t retry_after_s = 0);
  // GCC 12 destroys some temporaries of a co_await full-expression twice (GCC bugs
  // 100611, 101367), so every awaited call below takes named values, moved in.
  template <class Stream>
  awaitable<bool> reply_error(Stream& stream, const request_t& req, openai::api_error e,
                              bool close = false) {
    std::string body = openai::error_body(e);
    auto status = static_cast<http::status>(e.status);
    return reply(stream, req, status, std::move(body), "application/json", close, e.retry_after_s);
  }
};

}  // namespace tokenmill
