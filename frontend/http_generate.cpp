// Generation over HTTP: one /v1/completions or /v1/chat/completions request from the
// router's token chunks to a JSON body or an SSE stream, and the disconnect watcher that
// cancels the request when its client goes away.
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/write.hpp>

#include "frontend/detail/http_core.hpp"
#include "frontend/http_routes.hpp"
#include "frontend/validate.hpp"

namespace tokenmill {
namespace {

/// Waits until the client closes its end (or sends more bytes); a close marks the request
/// disconnected and wakes its coroutine.
awaitable<void> watch_disconnect(std::shared_ptr<beast::tcp_stream> stream,
                                 std::shared_ptr<http_detail::gen_state> g) {
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

}  // namespace

template <class Stream>
awaitable<bool> http_server::core::generate(Stream& stream, request_t& req, openai::endpoint kind) {
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
  auto g = std::make_shared<http_detail::gen_state>(io, tok, std::move(v->stop_strings));
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
    if (auto s = w.lock(); s && s.get() == &beast::get_lowest_layer(stream)) shared = s;
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
  // Log-probabilities (when asked for): whole responses collect them all; a stream sends
  // each token's with the chunk that carries its text, or the next one when its text is
  // held back (an unfinished character, a possible stop string).
  const bool want_logprobs = p.params.top_logprobs >= 0;
  std::vector<openai::logprob_entry> logprobs;
  uint32_t text_offset = 0;
  auto piece_of = [this](token_id t) { return tok->piece(t); };
  auto lp_arg = [&]() { return want_logprobs ? &logprobs : nullptr; };

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
    auto lps = std::exchange(g->pending_logprobs, {});
    auto toks = std::exchange(g->pending, {});
    for (size_t k = 0; k < toks.size(); ++k) {
      const token_id t = toks[k];
      std::string piece = g->text.push(t);
      if (want_logprobs && k < lps.size()) {
        logprobs.push_back(openai::make_logprob_entry(t, lps[k], piece_of, text_offset));
        text_offset += static_cast<uint32_t>(logprobs.back().token.size());
      }
      if (g->first_sent_ns == 0 && !sse) g->first_sent_ns = now_ns();
      if (sse) {
        if (!piece.empty()) {
          events += openai::sse_event(
              openai::stream_chunk(meta, piece, false, "", p.include_usage, lp_arg()));
          logprobs.clear();
        }
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
      if (sse && (!tail.empty() || !logprobs.empty())) {
        events += openai::sse_event(
            openai::stream_chunk(meta, tail, false, "", p.include_usage, lp_arg()));
        logprobs.clear();
      } else
        body_text += tail;
      if (sse && !events.empty() && g->first_sent_ns == 0) g->first_sent_ns = now_ns();
      auto gs = make_generation_summary(*g->summary, g->text.stopped(), g->text.tokens(),
                                        g->first_sent_ns, cfg.node);
      gens.erase(g->id);
      metrics->finished("http", gs, (now_ns() - arrived) / 1e9);
      beast::error_code ignored;
      // Ends the disconnect watcher.
      beast::get_lowest_layer(stream).socket().cancel(ignored);
      if (gs.error_code != errc::ok && !headers_sent) {
        // Nothing was sent yet: the error gets its own status (429 overloaded, 503, ...).
        auto err = openai::from_errc(gs.error_code, gs.error);
        if (gs.error_code == errc::overloaded)
          err.retry_after_s = std::max<uint32_t>(1, (gs.retry_after_ms + 999) / 1000);
        co_return co_await reply_error(stream, req, std::move(err));
      }
      if (!sse) {
        std::string body = openai::completion_body(meta, body_text, gs, lp_arg());
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

template awaitable<bool> http_server::core::generate(beast::tcp_stream&, request_t&,
                                                     openai::endpoint);
template awaitable<bool> http_server::core::generate(http_detail::tls_stream&, request_t&,
                                                     openai::endpoint);

}  // namespace tokenmill
