// The Responses API over HTTP (responses.hpp has the protocol): POST /v1/responses from
// the router's token chunks to one response object or a stream of numbered SSE events,
// the stored conversations behind previous_response_id, and GET / DELETE of a stored
// response. One sequence per request: the Responses API has no n, best_of or prompt lists.
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/write.hpp>

#include "frontend/detail/http_core.hpp"
#include "frontend/http_routes.hpp"
#include "frontend/responses.hpp"
#include "frontend/validate.hpp"

namespace tokenmill {
namespace {

/// Waits until the client closes its end; a close marks the request disconnected and
/// wakes its coroutine (as http_generate.cpp's watcher does for completions).
awaitable<void> watch_close(std::shared_ptr<beast::tcp_stream> stream,
                            std::shared_ptr<http_detail::gen_state> g) {
  beast::error_code ec;
  co_await stream->socket().async_wait(tcp::socket::wait_read,
                                       asio::redirect_error(use_awaitable, ec));
  if (ec || g->summary) co_return;
  char b = 0;
  auto n = ::recv(stream->socket().native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
    g->disconnected = true;
    g->wake->cancel();
  }
}

}  // namespace

template <class Stream>
awaitable<bool> http_server::core::responses_api(Stream& stream, request_t& req,
                                                 std::string_view path) {
  const auto now = response_store::clock::now();
  if (path != "/v1/responses") {
    // GET or DELETE /v1/responses/{id}, GET .../input_items: answered from the store.
    const auto m = req.method_string();
    const std::string_view target(req.target().data(), req.target().size());
    auto a = responses::stored_answer(std::string_view(m.data(), m.size()), target,
                                      stored_responses, now);
    if (auto* e = std::get_if<openai::api_error>(&a)) {
      openai::api_error err = std::move(*e);
      co_return co_await reply_error(stream, req, std::move(err));
    }
    std::string body = std::move(std::get<std::string>(a));
    co_return co_await reply(stream, req, http::status::ok, std::move(body));
  }

  auto parsed = responses::parse_request(req.body(), ctx);
  if (auto* e = std::get_if<openai::api_error>(&parsed)) {
    metrics->refused("http", errc::invalid_request);
    openai::api_error err = std::move(*e);
    co_return co_await reply_error(stream, req, std::move(err));
  }
  auto& r = std::get<responses::request>(parsed);
  // The previous response's conversation, held here even if the store evicts it meanwhile.
  std::shared_ptr<const response_store::entry> prev;
  if (!r.previous_response_id.empty()) {
    prev = stored_responses.get(r.previous_response_id, now);
    if (!prev) {
      metrics->refused("http", errc::invalid_request);
      auto err = responses::not_found(r.previous_response_id, "previous_response_id",
                                      stored_responses.bounds().ttl);
      co_return co_await reply_error(stream, req, std::move(err));
    }
  }
  const std::vector<openai::chat_message> no_history;
  const auto& history = prev ? prev->conversation : no_history;
  auto v = validate(responses::prompt_params(r, history, ctx.format), *tok, model);
  if (!v) {
    metrics->refused("http", v.error().code);
    auto err = openai::from_errc(v.error().code, v.error().message);
    co_return co_await reply_error(stream, req, std::move(err));
  }

  const int64_t arrived = now_ns();
  auto wake = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
  auto g = std::make_shared<http_detail::gen_state>(wake, tok, v->stop_strings);
  g->id = (uint64_t{cfg.node} << 48) | (uint64_t{1} << 47) | ++next_id;
  gens.emplace(g->id, g);
  {
    generate_request gr;
    gr.id = g->id;
    gr.prompt = v->prompt;
    gr.options = v->options;
    gr.tr.id = g->id;
    gr.tr.stamp(stage::arrived, cfg.node);
    gr.client = bridge;
    caf::anon_send(router, std::move(gr));
    metrics->started("http");
  }
  std::shared_ptr<beast::tcp_stream> shared;
  for (auto& w : streams)
    if (auto s = w.lock(); s && s.get() == &beast::get_lowest_layer(stream)) shared = s;
  if (shared) asio::co_spawn(io, watch_close(shared, g), asio::detached);

  responses::outcome o;
  o.id = responses::make_id("resp_", response_ids(), response_ids());
  o.message_id = responses::make_id("msg_", response_ids(), response_ids());
  o.created_at = unix_time_s();
  o.model = model.name;
  responses::event_stream events;
  const bool sse = r.stream;
  const bool chunked = req.version() >= 11;
  bool headers_sent = false;

  auto abandon = [&]() {
    cancel(*g);
    generation_summary gs;
    gs.id = g->id;
    gs.reason = finish_reason::cancelled;
    metrics->finished("http", gs, (now_ns() - arrived) / 1e9);
    gens.erase(g->id);
    wake->cancel();
  };
  // The head and the first events go out with the first text (or the end), so that a
  // request refused before any token still gets its own status (429, 503, …).
  auto write_raw = [&](std::string data) -> awaitable<bool> {
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
  };

  for (;;) {
    if (stopping || g->disconnected) {
      abandon();
      co_return false;
    }
    std::string out;
    // Text as events; the first one opens the stream (created, in_progress, the item).
    auto emit = [&](const std::string& piece) {
      if (!sse || piece.empty()) return;
      if (events.count() == 0) out += events.start(r, o);
      out += events.delta(o, piece);
    };
    g->pending_logprobs.clear();  // not asked for: the Responses API here has no logprobs
    for (token_id t : std::exchange(g->pending, {})) {
      std::string piece = g->text.push(t);
      if (g->first_sent_ns == 0 && !sse) g->first_sent_ns = now_ns();
      o.text += piece;
      emit(piece);
      if (g->text.stopped()) {
        cancel(*g);
        break;
      }
    }
    if (g->summary) {
      std::string tail = g->text.finish();
      o.text += tail;
      emit(tail);
      if (sse && !out.empty() && g->first_sent_ns == 0) g->first_sent_ns = now_ns();
      auto gs = make_generation_summary(*g->summary, g->text.stopped(), g->text.tokens(),
                                        g->first_sent_ns, cfg.node);
      gens.erase(g->id);
      metrics->finished("http", gs, (now_ns() - arrived) / 1e9);
      beast::error_code ignored;
      beast::get_lowest_layer(stream).socket().cancel(ignored);  // ends the watcher
      if (gs.error_code != errc::ok && events.count() == 0) {
        // Nothing was sent yet: the error gets its own status.
        auto err = openai::from_errc(gs.error_code, gs.error);
        if (gs.error_code == errc::overloaded)
          err.retry_after_s = std::max<uint32_t>(1, (gs.retry_after_ms + 999) / 1000);
        co_return co_await reply_error(stream, req, std::move(err));
      }
      responses::finish(o, gs.reason, gs.error_code, gs.error, gs.prompt_tokens,
                        gs.completion_tokens);
      // Failed responses are not kept (nothing to continue); --responses-max 0 keeps none.
      if (r.store && o.state != responses::status::failed &&
          stored_responses.bounds().max_entries > 0 &&
          !stored_responses.put(o.id, responses::stored_entry(r, o, history),
                                response_store::clock::now()))
        spdlog::warn("http: response {} is larger than the response store ({} bytes); not stored",
                     o.id, stored_responses.bounds().max_bytes);
      if (!sse) {
        std::string body = responses::response_body(r, o);
        co_return co_await reply(stream, req, http::status::ok, std::move(body));
      }
      std::string last = events.count() == 0 ? events.start(r, o) : std::move(out);
      last += events.end(r, o);
      if (!co_await write_raw(std::move(last))) co_return false;
      if (!chunked) co_return false;
      beast::error_code ec;
      auto end = http::make_chunk_last();
      co_await asio::async_write(stream, end, asio::redirect_error(use_awaitable, ec));
      co_return !ec && req.keep_alive();
    }
    if (!out.empty()) {
      if (g->first_sent_ns == 0) g->first_sent_ns = now_ns();
      if (!co_await write_raw(std::move(out))) {
        abandon();
        co_return false;
      }
      continue;  // more may have arrived while writing
    }
    beast::error_code ec;
    co_await wake->async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

template awaitable<bool> http_server::core::responses_api(beast::tcp_stream&, request_t&,
                                                          std::string_view);
template awaitable<bool> http_server::core::responses_api(http_detail::tls_stream&, request_t&,
                                                          std::string_view);

}  // namespace tokenmill
