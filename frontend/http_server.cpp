#include "frontend/http_server.hpp"

#include <sys/socket.h>

#include <chrono>
#include <deque>
#include <future>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <caf/all.hpp>

#include "actors/protocol.hpp"
#include "common/clock.hpp"
#include "frontend/bottleneck.hpp"
#include "frontend/completion_text.hpp"
#include "frontend/request_log.hpp"
#include "frontend/validate.hpp"

namespace tokenmill {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;

namespace {

/// One generate request between the router and its HTTP connection (Asio thread only).
struct gen_state {
  request_id id = 0;
  std::vector<token_id> pending;  ///< tokens received, not yet turned into text
  std::optional<request_summary> summary;
  completion_text text;
  asio::steady_timer wake;  ///< cancelled whenever something arrives for the request
  bool disconnected = false;
  bool cancel_sent = false;
  int64_t first_sent_ns = 0;
  int64_t last_token_ns = 0;
  gen_state(asio::io_context& io, std::shared_ptr<const tokenizer> tok,
            std::vector<std::string> stops)
      : text(std::move(tok), std::move(stops)), wake(io, asio::steady_timer::time_point::max()) {}
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

int64_t unix_time_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct http_server::core {
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
  std::thread thread;
  std::unordered_map<request_id, std::shared_ptr<gen_state>> gens;
  std::unordered_map<uint64_t, std::shared_ptr<status_wait>> status_calls;
  std::vector<std::weak_ptr<beast::tcp_stream>> streams;  ///< for closing them at stop
  uint64_t next_id = 0;
  uint64_t next_call = 0;
  bool stopping = false;

  core(caf::actor_system& s, caf::actor r, caf::actor sup, std::shared_ptr<const tokenizer> t,
       model_info m, http_server_config c, std::shared_ptr<frontend_metrics> mx)
      : sys(s),
        router(std::move(r)),
        supervisor(std::move(sup)),
        tok(std::move(t)),
        model(std::move(m)),
        cfg(std::move(c)),
        metrics(std::move(mx)) {
    ctx.served_model = model.name;
    ctx.format = cfg.chat_format;
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
    g.wake.cancel();
  }
  void on_summary(request_summary& s) {
    auto it = gens.find(s.id);
    if (it == gens.end()) return;
    it->second->summary = std::move(s);
    it->second->wake.cancel();
  }
  void on_status(uint64_t call, std::optional<cluster_status> st, std::string error) {
    auto it = status_calls.find(call);
    if (it == status_calls.end()) return;
    it->second->status = std::move(st);
    it->second->error = std::move(error);
    it->second->done = true;
    it->second->wake.cancel();
  }

  void cancel(gen_state& g) {
    if (g.cancel_sent || g.summary) return;
    g.cancel_sent = true;
    caf::anon_send(router, cancel_request{g.id});
  }

  awaitable<std::optional<cluster_status>> query_status(std::string& error) {
    auto call = ++next_call;
    auto w = std::make_shared<status_wait>(io);
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

  awaitable<void> accept_loop();
  awaitable<void> session(std::shared_ptr<beast::tcp_stream> stream);
  awaitable<bool> route(beast::tcp_stream& stream, request_t& req);
  awaitable<bool> generate(beast::tcp_stream& stream, request_t& req, openai::endpoint kind);
  awaitable<bool> reply(beast::tcp_stream& stream, const request_t& req, http::status status,
                        std::string body, std::string_view content_type = "application/json",
                        bool close = false);
  // GCC 12 destroys some temporaries of a co_await full-expression twice (GCC bugs
  // 100611, 101367), so every awaited call below takes named values, moved in.
  awaitable<bool> reply_error(beast::tcp_stream& stream, const request_t& req, openai::api_error e,
                              bool close = false) {
    std::string body = openai::error_body(e);
    auto status = static_cast<http::status>(e.status);
    return reply(stream, req, status, std::move(body), "application/json", close);
  }
  /// The answer to a request that needs no waiting (everything but generation, /ready and
  /// /metrics); nullopt for those.
  std::optional<std::variant<openai::api_error, std::pair<std::string, std::string>>> plan(
      const request_t& req, std::string_view path);
};

namespace {

caf::behavior http_bridge(caf::event_based_actor* self, http_server::core* c,
                          std::shared_ptr<http_server::core> keep, caf::actor supervisor) {
  // `keep` holds the core (and its io_context) alive as long as this actor may post to it;
  // the posted handlers use the raw pointer so that none of them owns the core.
  return {
      [c, keep](token_chunk& ch) {
        asio::post(c->io, [c, ch = std::move(ch)]() mutable { c->on_chunk(ch); });
      },
      [c, keep](request_summary& s) {
        asio::post(c->io, [c, s = std::move(s)]() mutable { c->on_summary(s); });
      },
      [self, c, keep, supervisor](status_atom, uint64_t call) {
        self->request(supervisor, std::chrono::seconds(3), status_atom::value)
            .then(
                [c, keep, call](cluster_status& st) {
                  asio::post(c->io, [c, call, st = std::move(st)]() mutable {
                    c->on_status(call, std::move(st), {});
                  });
                },
                [c, keep, call](caf::error& e) {
                  asio::post(c->io, [c, call, msg = caf::to_string(e)]() mutable {
                    c->on_status(call, std::nullopt, "supervisor did not answer: " + msg);
                  });
                });
      },
  };
}

/// Waits until the client closes its end (or sends more bytes); a close marks the request
/// disconnected and wakes its coroutine.
awaitable<void> watch_disconnect(std::shared_ptr<beast::tcp_stream> stream,
                                 std::shared_ptr<gen_state> g) {
  beast::error_code ec;
  co_await stream->socket().async_wait(tcp::socket::wait_read,
                                       asio::redirect_error(use_awaitable, ec));
  if (ec || g->summary) co_return;
  char b = 0;
  auto n = ::recv(stream->socket().native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
    g->disconnected = true;
    g->wake.cancel();
  }
  // n > 0: the client pipelined its next request; nothing more to learn here.
}

std::string_view target_path(beast::string_view target) {
  std::string_view t(target.data(), target.size());
  return t.substr(0, t.find('?'));
}

/// The value of query parameter `name` in `target` (no percent-decoding: the /debug
/// parameters are numbers), if present.
std::optional<std::string> query_param(beast::string_view target, std::string_view name) {
  std::string_view t(target.data(), target.size());
  auto q = t.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  t.remove_prefix(q + 1);
  while (!t.empty()) {
    auto amp = t.find('&');
    auto part = t.substr(0, amp);
    auto eq = part.find('=');
    if (part.substr(0, eq) == name)
      return std::string(eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    t.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

/// A positive number from query parameter `name`: `fallback` when absent, nullopt when
/// malformed or out of (0, max].
std::optional<double> query_number(beast::string_view target, std::string_view name,
                                   double fallback, double max) {
  auto v = query_param(target, name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    double d = std::stod(*v, &used);
    if (used != v->size() || !(d > 0) || d > max) return std::nullopt;
    return d;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

awaitable<bool> http_server::core::reply(beast::tcp_stream& stream, const request_t& req,
                                         http::status status, std::string body,
                                         std::string_view content_type, bool close) {
  http::response<http::string_body> res{status, req.version()};
  res.set(http::field::server, "tokenmill");
  res.set(http::field::content_type, beast::string_view(content_type.data(), content_type.size()));
  res.keep_alive(req.keep_alive() && !close);
  res.body() = std::move(body);
  res.prepare_payload();
  stream.expires_after(std::chrono::milliseconds(static_cast<int64_t>(cfg.write_timeout_s * 1e3)));
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
    sock.set_option(tcp::no_delay(true), ec);
    auto stream = std::make_shared<beast::tcp_stream>(std::move(sock));
    std::erase_if(streams, [](const auto& w) { return w.expired(); });
    streams.push_back(stream);
    asio::co_spawn(io, session(std::move(stream)), asio::detached);
  }
}

awaitable<void> http_server::core::session(std::shared_ptr<beast::tcp_stream> stream) {
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(cfg.max_header_bytes);
    parser.body_limit(cfg.max_body_bytes);
    stream->expires_after(
        std::chrono::milliseconds(static_cast<int64_t>(cfg.idle_timeout_s * 1e3)));
    beast::error_code ec;
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
    if (!parser.is_done())
      co_await http::async_read(*stream, buf, parser, asio::redirect_error(use_awaitable, ec));
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
  stream->socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream->socket().close(ignored);
}

std::optional<std::variant<openai::api_error, std::pair<std::string, std::string>>>
http_server::core::plan(const request_t& req, std::string_view path) {
  using answer = std::variant<openai::api_error, std::pair<std::string, std::string>>;
  const auto method = req.method();
  auto wrong_method = [&](const char* allowed) {
    return openai::api_error{405, "invalid_request_error",
                             fmt::format("{} {} is not allowed; use {}",
                                         std::string(req.method_string()), path, allowed),
                             "", "method_not_allowed"};
  };
  auto json_reply = [](std::string body) {
    return answer(std::pair<std::string, std::string>{"application/json", std::move(body)});
  };
  if (path == "/v1/completions" || path == "/v1/chat/completions")
    return method == http::verb::post ? std::nullopt : std::optional<answer>(wrong_method("POST"));
  if (path == "/ready" || path == "/metrics" || path == "/debug/snapshot") {
    if (method != http::verb::get) return wrong_method("GET");
    if (path == "/debug/snapshot" && !query_number(req.target(), "window", 30, 86400))
      return openai::api_error{400, "invalid_request_error",
                               "'window' must be a number of seconds in (0, 86400]", "window", ""};
    return std::nullopt;
  }
  if (path == "/debug/requests") {
    // The newest finished requests, oldest first, with their whole timing record.
    if (method != http::verb::get) return wrong_method("GET");
    auto limit = query_number(req.target(), "limit", 100, 1e9);
    if (!limit)
      return openai::api_error{400, "invalid_request_error", "'limit' must be a positive integer",
                               "limit", ""};
    nlohmann::ordered_json out;
    out["requests"] = nlohmann::ordered_json::array();
    for (const auto& r : metrics->log().recent(static_cast<size_t>(*limit)))
      out["requests"].push_back(to_json(r));
    return json_reply(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  if (path == "/v1/models") {
    if (method != http::verb::get) return wrong_method("GET");
    return json_reply(openai::models_body(model.name, unix_time_s(), model.max_context));
  }
  if (path.starts_with("/v1/models/")) {
    if (method != http::verb::get) return wrong_method("GET");
    auto name = path.substr(std::string_view("/v1/models/").size());
    if (name != model.name)
      return openai::api_error{
          404, "invalid_request_error",
          fmt::format("The model '{}' does not exist; this server serves '{}'", name, model.name),
          "model", "model_not_found"};
    auto list =
        nlohmann::json::parse(openai::models_body(model.name, unix_time_s(), model.max_context));
    return json_reply(list["data"][0].dump());
  }
  if (path == "/tokenize") {
    if (method != http::verb::post) return wrong_method("POST");
    auto j = nlohmann::json::parse(req.body(), nullptr, false);
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
      return openai::api_error{400, "invalid_request_error",
                               "the body must be a JSON object with a string 'prompt'", "prompt",
                               ""};
    bool add_special = true;
    if (j.contains("add_special_tokens")) {
      if (!j["add_special_tokens"].is_boolean())
        return openai::api_error{400, "invalid_request_error",
                                 "'add_special_tokens' must be a boolean", "add_special_tokens",
                                 ""};
      add_special = j["add_special_tokens"].get<bool>();
    }
    auto ids = tok->encode(j["prompt"].get<std::string>(), add_special);
    nlohmann::ordered_json out;
    out["count"] = ids.size();
    out["max_model_len"] = model.max_context;
    out["tokens"] = ids;
    return json_reply(out.dump());
  }
  if (path == "/health") {
    if (method != http::verb::get) return wrong_method("GET");
    return json_reply(R"({"status":"ok"})");
  }
  return openai::api_error{404, "invalid_request_error", fmt::format("no such endpoint: {}", path),
                           "", "not_found"};
}

awaitable<bool> http_server::core::route(beast::tcp_stream& stream, request_t& req) {
  const std::string path(target_path(req.target()));
  if ((path.starts_with("/v1/") || path == "/tokenize") && !cfg.api_key.empty()) {
    auto h = req[http::field::authorization];
    if (std::string_view(h.data(), h.size()) != "Bearer " + cfg.api_key) {
      openai::api_error e{401, "authentication_error",
                          "missing or incorrect API key: send 'Authorization: Bearer <key>'", "",
                          "invalid_api_key"};
      co_return co_await reply_error(stream, req, std::move(e));
    }
  }
  auto p = plan(req, path);
  if (p) {
    if (auto* e = std::get_if<openai::api_error>(&*p)) {
      openai::api_error err = std::move(*e);
      co_return co_await reply_error(stream, req, std::move(err));
    }
    auto& [type, body] = std::get<std::pair<std::string, std::string>>(*p);
    std::string content_type = std::move(type), text = std::move(body);
    co_return co_await reply(stream, req, http::status::ok, std::move(text), content_type);
  }
  if (path == "/v1/completions" || path == "/v1/chat/completions") {
    auto kind = path == "/v1/completions" ? openai::endpoint::completions
                                          : openai::endpoint::chat_completions;
    co_return co_await generate(stream, req, kind);
  }
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
    double window = query_number(req.target(), "window", 30, 86400).value_or(30);
    auto snap = metrics->log().snapshot(window, st ? &*st : nullptr);
    if (!st) snap.status_error = err;
    auto b = find_bottleneck(snap);
    auto out = to_json(snap);
    out["bottleneck"] = b.found ? b.line : std::string();
    out["bottleneck_worker"] = b.worker;
    out["bottleneck_note"] = b.found ? std::string() : b.line;
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
  }
  if (cfg.collect_node_metrics) cfg.collect_node_metrics(metrics->registry());
  std::string text = metrics->registry().expose();
  co_return co_await reply(stream, req, http::status::ok, std::move(text),
                           "text/plain; version=0.0.4; charset=utf-8");
}

awaitable<bool> http_server::core::generate(beast::tcp_stream& stream, request_t& req,
                                            openai::endpoint kind) {
  auto parsed = openai::parse_request(kind, req.body(), ctx);
  if (auto* e = std::get_if<openai::api_error>(&parsed)) {
    metrics->refused("http", errc::invalid_request);
    openai::api_error err = std::move(*e);
    co_return co_await reply_error(stream, req, std::move(err));
  }
  auto& p = std::get<openai::parsed_request>(parsed);
  auto v = validate(p.params, *tok, model);
  if (!v) {
    metrics->refused("http", v.error().code);
    auto err = openai::from_errc(v.error().code, v.error().message);
    co_return co_await reply_error(stream, req, std::move(err));
  }
  const int64_t arrived = now_ns();
  auto g = std::make_shared<gen_state>(io, tok, std::move(v->stop_strings));
  g->id = (uint64_t{cfg.node} << 48) | (uint64_t{1} << 47) | ++next_id;
  gens.emplace(g->id, g);
  generate_request gr;
  gr.id = g->id;
  gr.prompt = std::move(v->prompt);
  gr.options = std::move(v->options);
  gr.tr.id = g->id;
  gr.tr.stamp(stage::arrived, cfg.node);
  gr.client = bridge;
  caf::anon_send(router, std::move(gr));
  metrics->started("http");

  // The stream is owned by the session; the watcher needs a shared owner to outlive it.
  std::shared_ptr<beast::tcp_stream> shared;
  for (auto& w : streams)
    if (auto s = w.lock(); s && s.get() == &stream) shared = s;
  if (shared) asio::co_spawn(io, watch_disconnect(shared, g), asio::detached);

  openai::response_meta meta;
  meta.kind = kind;
  meta.id = fmt::format("{}-{:x}", kind == openai::endpoint::chat_completions ? "chatcmpl" : "cmpl",
                        g->id);
  meta.created = unix_time_s();
  meta.model = model.name;
  const bool chat = kind == openai::endpoint::chat_completions;
  const bool sse = p.stream;
  const bool chunked = req.version() >= 11;
  bool headers_sent = false;
  std::string body_text;

  auto abandon = [&]() {
    // The client is gone: stop the request everywhere and free its KV blocks.
    cancel(*g);
    generation_summary gs;
    gs.id = g->id;
    gs.reason = finish_reason::cancelled;
    metrics->finished("http", gs, (now_ns() - arrived) / 1e9);
    gens.erase(g->id);
    g->wake.cancel();
  };
  auto write_raw = [&](std::string data) -> awaitable<bool> {
    beast::error_code ec;
    stream.expires_after(
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
      if (chat)
        data = openai::sse_event(openai::stream_chunk(meta, "", true, "", p.include_usage)) + data;
    }
    if (data.empty()) co_return true;
    if (chunked) {
      auto chunk = http::make_chunk(asio::buffer(data));
      co_await asio::async_write(stream, chunk, asio::redirect_error(use_awaitable, ec));
    } else
      co_await asio::async_write(stream, asio::buffer(data),
                                 asio::redirect_error(use_awaitable, ec));
    co_return !ec;
  };

  for (;;) {
    if (g->disconnected || stopping) {
      abandon();
      co_return false;
    }
    std::string events;
    for (token_id t : std::exchange(g->pending, {})) {
      std::string piece = g->text.push(t);
      if (g->first_sent_ns == 0 && !sse) g->first_sent_ns = now_ns();
      if (sse) {
        if (!piece.empty())
          events +=
              openai::sse_event(openai::stream_chunk(meta, piece, false, "", p.include_usage));
      } else {
        body_text += piece;
      }
      if (g->text.stopped()) {
        cancel(*g);  // the text reached a stop string: this token ends the completion
        break;
      }
    }
    if (g->summary) {
      std::string tail = g->text.finish();
      if (sse && !tail.empty())
        events += openai::sse_event(openai::stream_chunk(meta, tail, false, "", p.include_usage));
      else
        body_text += tail;
      if (sse && !events.empty() && g->first_sent_ns == 0) g->first_sent_ns = now_ns();
      auto gs = make_generation_summary(*g->summary, g->text.stopped(), g->text.tokens(),
                                        g->first_sent_ns, cfg.node);
      gens.erase(g->id);
      metrics->finished("http", gs, (now_ns() - arrived) / 1e9);
      beast::error_code ignored;
      stream.socket().cancel(ignored);  // ends the disconnect watcher
      if (gs.error_code != errc::ok && !headers_sent) {
        // Nothing was sent yet: the error gets its own status (429 overloaded, 503, ...).
        auto err = openai::from_errc(gs.error_code, gs.error);
        co_return co_await reply_error(stream, req, std::move(err));
      }
      if (!sse) {
        std::string body = openai::completion_body(meta, body_text, gs);
        co_return co_await reply(stream, req, http::status::ok, std::move(body));
      }
      if (gs.error_code != errc::ok) {
        events += openai::sse_event(openai::error_body(openai::from_errc(gs.error_code, gs.error)));
      } else {
        events += openai::sse_event(openai::stream_chunk(
            meta, "", false, openai::finish_reason_name(gs.reason), p.include_usage));
        if (p.include_usage) events += openai::sse_event(openai::usage_chunk(meta, gs));
      }
      events += openai::sse_done;
      if (!co_await write_raw(std::move(events))) co_return false;
      if (!chunked) co_return false;
      beast::error_code ec;
      auto last = http::make_chunk_last();
      co_await asio::async_write(stream, last, asio::redirect_error(use_awaitable, ec));
      co_return !ec && req.keep_alive();
    }
    if (!events.empty()) {
      if (g->first_sent_ns == 0) g->first_sent_ns = now_ns();
      if (!co_await write_raw(std::move(events))) {
        abandon();
        co_return false;
      }
      continue;  // more may have arrived while writing
    }
    beast::error_code ec;
    co_await g->wake.async_wait(asio::redirect_error(use_awaitable, ec));
  }
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
    tcp::endpoint ep(asio::ip::make_address(c.cfg.host), c.cfg.port);
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
  auto port = c.acceptor->local_endpoint().port();
  c.bridge = c.sys.spawn(http_bridge, core_.get(), core_, c.supervisor);
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
      g->wake.cancel();
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

}  // namespace tokenmill
