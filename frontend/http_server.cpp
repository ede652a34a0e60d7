// The HTTP server's connections and lifecycle: accept, read each request, route it
// (rules in http_routes.cpp, generation in http_generate.cpp), answer /ready, /metrics
// and /debug/snapshot from the supervisor's status, and start/stop.
#include "frontend/http_server.hpp"

#include <chrono>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <variant>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>

#include "frontend/bottleneck.hpp"
#include "frontend/detail/http_core.hpp"
#include "frontend/http_routes.hpp"
#include "frontend/request_log.hpp"
#include "frontend/router_bridge.hpp"

namespace tokenmill {

template <class Stream>
awaitable<bool> http_server::core::reply(Stream& stream, const request_t& req, http::status status,
                                         std::string body, std::string_view content_type,
                                         bool close, uint32_t retry_after_s) {
  http::response<http::string_body> res{status, req.version()};
  res.set(http::field::server, "tokenmill");
  if (retry_after_s > 0) res.set(http::field::retry_after, std::to_string(retry_after_s));
  // RFC 6750 §3: a refused or missing Bearer key names the scheme to use.
  if (status == http::status::unauthorized)
    res.set(http::field::www_authenticate, "Bearer realm=\"tokenmill\"");
  res.set(http::field::content_type, beast::string_view(content_type.data(), content_type.size()));
  res.keep_alive(req.keep_alive() && !close);
  res.body() = std::move(body);
  res.prepare_payload();
  beast::get_lowest_layer(stream).expires_after(
      std::chrono::milliseconds(static_cast<int64_t>(cfg.write_timeout_s * 1e3)));
  beast::error_code ec;
  co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
  co_return !ec && res.keep_alive();
}

awaitable<void> http_server::core::accept_loop() {
  for (;;) {
    beast::error_code ec;
    tcp::socket sock = co_await acceptor->async_accept(asio::redirect_error(use_awaitable, ec));
    if (stopping) co_return;
    if (ec) {
      spdlog::warn("http: accept failed: {}", ec.message());
      asio::steady_timer t(io, std::chrono::milliseconds(10));
      co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    if (connections >= cfg.max_connections) {
      // Over the limit: closed at once, so that a flood of idle or slow connections costs a
      // bounded amount and the server's file descriptors stay available.
      if (connections_refused++ % 1000 == 0)
        spdlog::warn(
            "http: {} connections open, the limit (--http-max-connections): closing "
            "new ones ({} so far)",
            connections, connections_refused);
      sock.close(ec);
      continue;
    }
    sock.set_option(tcp::no_delay(true), ec);
    if (cfg.send_buffer_bytes > 0)
      sock.set_option(asio::socket_base::send_buffer_size(cfg.send_buffer_bytes), ec);
    std::erase_if(streams, [](const auto& w) { return w.expired(); });
    if (tls) {
      auto stream = std::make_shared<http_detail::tls_stream>(std::move(sock), *tls);
      // The TCP layer lives inside the TLS stream: share its owner.
      streams.push_back(std::shared_ptr<beast::tcp_stream>(stream, &stream->next_layer()));
      asio::co_spawn(io, tls_session(std::move(stream)), asio::detached);
      continue;
    }
    auto stream = std::make_shared<beast::tcp_stream>(std::move(sock));
    streams.push_back(stream);
    asio::co_spawn(io, session(std::move(stream)), asio::detached);
  }
}

awaitable<void> http_server::core::tls_session(std::shared_ptr<http_detail::tls_stream> stream) {
  auto& tcp_layer = stream->next_layer();
  tcp_layer.expires_after(
      std::chrono::milliseconds(static_cast<int64_t>(cfg.idle_timeout_s * 1e3)));
  beast::error_code ec;
  co_await stream->async_handshake(asio::ssl::stream_base::server,
                                   asio::redirect_error(use_awaitable, ec));
  if (ec) {
    // A plaintext client, an unknown CA on the client's side, a scanner: drop this
    // connection only.
    spdlog::info("http: TLS handshake failed, connection dropped: {}", ec.message());
    beast::error_code ignored;
    tcp_layer.socket().close(ignored);
    co_return;
  }
  auto owned = std::move(stream);  // a named value into the awaited call (GCC 12, NOTES.md)
  co_await session(owned);
}

template <class Stream>
awaitable<void> http_server::core::session(std::shared_ptr<Stream> stream) {
  ++connections;
  beast::flat_buffer buf;
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1e3)); };
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(cfg.max_header_bytes);
    parser.body_limit(cfg.max_body_bytes);
    beast::error_code ec;
    if (buf.size() == 0) {
      // Between requests: the keep-alive idle timeout, until the next request's first bytes.
      beast::get_lowest_layer(*stream).expires_after(ms(cfg.idle_timeout_s));
      auto n = co_await stream->async_read_some(buf.prepare(4096),
                                                asio::redirect_error(use_awaitable, ec));
      if (ec) break;  // closed, idle too long, or failed
      buf.commit(n);
    }
    // The headers must all arrive within header_timeout_s of the first byte: a client that
    // trickles them (slowloris) is cut off (Beast closes the socket when the timer expires).
    beast::get_lowest_layer(*stream).expires_after(ms(cfg.header_timeout_s));
    co_await http::async_read_header(*stream, buf, parser, asio::redirect_error(use_awaitable, ec));
    request_t fallback;
    fallback.version(11);
    fallback.keep_alive(false);
    if (ec) {
      const auto& http_category = beast::error_code(http::error::bad_target).category();
      std::optional<openai::api_error> e;
      if (ec == http::error::header_limit)
        e = openai::api_error{431, "invalid_request_error",
                              fmt::format("request headers exceed {} bytes", cfg.max_header_bytes),
                              "", "request_too_large"};
      else if (ec == http::error::body_limit)
        e = openai::api_error{
            413, "invalid_request_error",
            fmt::format("request body exceeds the limit of {} bytes", cfg.max_body_bytes), "",
            "request_too_large"};
      else if (ec.category() == http_category && ec != http::error::end_of_stream &&
               ec != http::error::partial_message)
        e = openai::api_error{400, "invalid_request_error",
                              "malformed HTTP request: " + ec.message(), "", ""};
      if (e) co_await reply_error(*stream, fallback, std::move(*e), true);
      break;  // otherwise the client went away, idled out, or the connection failed
    }
    auto& head = parser.get();
    if (beast::iequals(head[http::field::expect], "100-continue")) {
      http::response<http::empty_body> cont{http::status::continue_, head.version()};
      co_await http::async_write(*stream, cont, asio::redirect_error(use_awaitable, ec));
      if (ec) break;
    }
    if (!parser.is_done()) {
      beast::get_lowest_layer(*stream).expires_after(ms(cfg.body_timeout_s));
      co_await http::async_read(*stream, buf, parser, asio::redirect_error(use_awaitable, ec));
    }
    if (ec) {
      std::optional<openai::api_error> e;
      if (ec == http::error::body_limit)
        e = openai::api_error{
            413, "invalid_request_error",
            fmt::format("request body exceeds the limit of {} bytes", cfg.max_body_bytes), "",
            "request_too_large"};
      else if (ec.category() == beast::error_code(http::error::bad_target).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message)
        e = openai::api_error{400, "invalid_request_error",
                              "malformed HTTP request body: " + ec.message(), "", ""};
      if (e) co_await reply_error(*stream, fallback, std::move(*e), true);
      break;
    }
    auto req = parser.release();
    bool keep = co_await route(*stream, req);
    if (!keep || stopping) break;
  }
  beast::error_code ignored;
  auto& sock = beast::get_lowest_layer(*stream).socket();
  sock.shutdown(tcp::socket::shutdown_send, ignored);
  sock.close(ignored);
  --connections;
}

template <class Stream>
awaitable<bool> http_server::core::route(Stream& stream, request_t& req) {
  const std::string_view target(req.target().data(), req.target().size());
  const std::string path(target_path(target));
  auto auth = req[http::field::authorization];
  if (cfg.keys) {
    beast::error_code ec;
    auto ep = beast::get_lowest_layer(stream).socket().remote_endpoint(ec);
    const std::string peer = ec ? std::string("?") : ep.address().to_string();
    if (auto e =
            check_api_key(path, std::string_view(auth.data(), auth.size()), cfg.keys.get(),
                          cfg.protect_metrics, *cfg.throttle, peer, auth_throttle::clock::now())) {
      if (metrics) metrics->refused("http", errc::unauthenticated);
      const auto m = req.method_string();
      spdlog::info("http: {} {} from {} refused: {}", std::string_view(m.data(), m.size()), path,
                   peer, e->message);
      co_return co_await reply_error(stream, req, std::move(*e));
    }
  }
  const auto method = req.method_string();
  auto p = plan_http_request(std::string_view(method.data(), method.size()), target, req.body(),
                             http_route_context{model, *tok, metrics->log()});
  if (p) {
    if (auto* e = std::get_if<openai::api_error>(&*p)) {
      openai::api_error err = std::move(*e);
      co_return co_await reply_error(stream, req, std::move(err));
    }
    auto& a = std::get<http_answer>(*p);
    std::string content_type = std::move(a.content_type), text = std::move(a.body);
    co_return co_await reply(stream, req, http::status::ok, std::move(text), content_type);
  }
  if (path == "/v1/completions" || path == "/v1/chat/completions") {
    auto kind = path == "/v1/completions" ? openai::endpoint::completions
                                          : openai::endpoint::chat_completions;
    co_return co_await generate(stream, req, kind);
  }
  if (path == "/v1/responses" || path.starts_with("/v1/responses/"))
    co_return co_await responses_api(stream, req, path);
  std::string err;
  auto st = co_await query_status(err);
  if (path == "/ready") {
    nlohmann::ordered_json out;
    uint32_t decode_up = 0;
    if (st)
      for (const auto& w : st->workers)
        if (w.kind == role::decode && w.up) ++decode_up;
    bool ready = st && st->ready && decode_up > 0;
    out["ready"] = ready;
    if (st) {
      out["cluster"] = st->cluster;
      out["decode_workers_up"] = decode_up;
    } else {
      out["error"] = err;
    }
    std::string body = out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    auto status = ready ? http::status::ok : http::status::service_unavailable;
    co_return co_await reply(stream, req, status, std::move(body));
  }
  if (path == "/debug/snapshot") {
    // Per-worker aggregates of the requests of the last window, the live status, and the
    // worker that is the bottleneck.
    double window = query_number(target, "window", 30, 86400).value_or(30);
    auto snap = metrics->log().snapshot(window, st ? &*st : nullptr);
    if (!st) snap.status_error = err;
    auto b = find_bottleneck(snap);
    auto out = to_json(snap);
    out["bottleneck"] = b.found ? b.line : std::string();
    out["bottleneck_worker"] = b.worker;
    out["bottleneck_note"] = b.found ? std::string() : b.line;
    if (st) {
      // The planner's events on this node's clock (the requests' clock): the supervisor
      // stamps on its own, `clock_offset_ns` ahead of this node's.
      auto planner = st->planner;
      for (const auto& n : st->nodes)
        if (n.name == metrics->node())
          for (auto& e : planner.events)
            e.t_ns -= n.clock_offset_ns;
      out["planner"] = planner_to_json(planner);
    }
    std::string body = out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    co_return co_await reply(stream, req, http::status::ok, std::move(body));
  }
  // /metrics: the registry, with this node's workers refreshed from the status (every
  // other node serves its own workers' series on its own port).
  if (st) {
    std::vector<worker_status> local;
    for (const auto& w : st->workers)
      if (w.node == metrics->node()) local.push_back(w);
    export_worker_metrics(metrics->registry(), local);
    export_planner_metrics(metrics->registry(), metrics->node(), st->planner);
  }
  if (cfg.collect_node_metrics) cfg.collect_node_metrics(metrics->registry());
  std::string text = metrics->registry().expose();
  co_return co_await reply(stream, req, http::status::ok, std::move(text),
                           "text/plain; version=0.0.4; charset=utf-8");
}

result<openai::chat_format> choose_chat_format(std::string_view option,
                                               std::string_view model_template) {
  if (option == "auto" || option.empty())
    return openai::detect_chat_format(model_template).value_or(openai::chat_format::chatml);
  if (auto f = openai::chat_format_from_name(option)) return *f;
  return error_info{errc::invalid_request,
                    fmt::format("unknown chat template '{}' (expected auto, chatml, llama3 or "
                                "mistral)",
                                option)};
}

http_server::http_server(caf::actor_system& sys, caf::actor router, caf::actor supervisor,
                         std::shared_ptr<const tokenizer> tok, model_info model,
                         http_server_config cfg, std::shared_ptr<frontend_metrics> metrics)
    : core_(std::make_shared<core>(sys, std::move(router), std::move(supervisor), std::move(tok),
                                   std::move(model), std::move(cfg), std::move(metrics))) {}

http_server::~http_server() {
  stop();
}

result<uint16_t> http_server::start() {
  auto& c = *core_;
  if (c.thread.joinable()) return error_info{errc::internal, "http server already started"};
  try {
    // A host name (a manifest node's address may be one) binds the address it resolves to.
    tcp::resolver resolver(c.io);
    tcp::endpoint ep = *resolver
                            .resolve(c.cfg.host, std::to_string(c.cfg.port),
                                     tcp::resolver::passive | tcp::resolver::numeric_service)
                            .begin();
    c.acceptor.emplace(c.io);
    c.acceptor->open(ep.protocol());
    c.acceptor->set_option(asio::socket_base::reuse_address(true));
    c.acceptor->bind(ep);
    c.acceptor->listen(asio::socket_base::max_listen_connections);
  } catch (const std::exception& e) {
    c.acceptor.reset();
    return error_info{errc::invalid_request, fmt::format("cannot listen on {}:{} (http): {}",
                                                         c.cfg.host, c.cfg.port, e.what())};
  }
  if (!c.cfg.tls_cert.empty() || !c.cfg.tls_key.empty()) {
    if (c.cfg.tls_cert.empty() || c.cfg.tls_key.empty()) {
      c.acceptor.reset();
      return error_info{errc::invalid_request, "TLS needs both --tls-cert and --tls-key"};
    }
    const char* step = "--tls-cert";
    const std::string* file = &c.cfg.tls_cert;
    try {
      c.tls.emplace(asio::ssl::context::tls_server);
      c.tls->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                         asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                         asio::ssl::context::no_tlsv1_1);
      c.tls->use_certificate_chain_file(c.cfg.tls_cert);
      step = "--tls-key";
      file = &c.cfg.tls_key;
      c.tls->use_private_key_file(c.cfg.tls_key, asio::ssl::context::pem);
    } catch (const std::exception& e) {
      c.tls.reset();
      c.acceptor.reset();
      return error_info{errc::invalid_request,
                        fmt::format("http TLS: {} {}: {}", step, *file, e.what())};
    }
  }
  auto port = c.acceptor->local_endpoint().port();
  // The callbacks hold the core (and its io_context) alive as long as the bridge may post
  // to it; the posted handlers use the raw pointer so that none of them owns the core.
  c.bridge = spawn_router_bridge(
      c.sys, c.supervisor,
      {[c = core_.get(), keep = core_](token_chunk&& ch) {
         asio::post(c->io, [c, ch = std::move(ch)]() mutable { c->on_chunk(ch); });
       },
       [c = core_.get(), keep = core_](request_summary&& s) {
         asio::post(c->io, [c, s = std::move(s)]() mutable { c->on_summary(s); });
       },
       [c = core_.get(), keep = core_](uint64_t call, result<cluster_status> st) {
         asio::post(c->io, [c, call, st = std::move(st)]() mutable { c->on_status(call, st); });
       }});
  asio::co_spawn(c.io, c.accept_loop(), asio::detached);
  c.thread = std::thread([&c] { c.io.run(); });
  return port;
}

void http_server::stop() {
  auto& c = *core_;
  if (!c.thread.joinable()) return;
  std::promise<void> done;
  asio::post(c.io, [&c, &done] {
    c.stopping = true;
    beast::error_code ignored;
    c.acceptor->close(ignored);
    // Cancel whatever is in flight, so no KV blocks stay reserved for a client that will
    // never be answered; then close every connection.
    for (auto& [id, g] : c.gens) {
      c.cancel(*g);
      g->wake->cancel();
    }
    for (auto& [call, w] : c.status_calls)
      w->wake.cancel();
    for (auto& w : c.streams)
      if (auto s = w.lock()) s->socket().close(ignored);
    done.set_value();
  });
  done.get_future().wait();
  c.io.stop();
  c.thread.join();
  caf::anon_send_exit(c.bridge, caf::exit_reason::user_shutdown);
  c.bridge = nullptr;  // the bridge holds the core; the core must not hold the bridge
}

template awaitable<bool> http_server::core::reply(beast::tcp_stream&, const request_t&,
                                                  http::status, std::string, std::string_view, bool,
                                                  uint32_t);
template awaitable<bool> http_server::core::reply(http_detail::tls_stream&, const request_t&,
                                                  http::status, std::string, std::string_view, bool,
                                                  uint32_t);

}  // namespace tokenmill
