// The Responses API over HTTP (responses.hpp has the protocol): POST /v1/responses from
// the router's token chunks to one response object or a stream of numbered SSE events,
// the stored conversations behind previous_response_id, and GET / DELETE of a stored
// response. One sequence per request: the Responses API has no n, best_of or prompt lists.
#include <string>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "frontend/detail/http_core.hpp"
#include "frontend/http_routes.hpp"
#include "frontend/responses.hpp"
#include "frontend/validate.hpp"

namespace tokenmill {

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
  auto g = submit(wake, *v);
  watch_disconnect(stream, {g});

  responses::outcome o;
  o.id = responses::make_id("resp_", response_ids(), response_ids());
  o.message_id = responses::make_id("msg_", response_ids(), response_ids());
  o.created_at = unix_time_s();
  o.model = model.name;
  responses::event_stream events;
  const bool sse = r.stream;
  // The head and the first events go out with the first text (or the end), so that a
  // request refused before any token still gets its own status (429, 503, …).
  bool headers_sent = false;

  auto abandon = [&]() {
    drop(*g, arrived);
    wake->cancel();
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
        auto err = http_detail::failure_error(gs.error_code, gs.error, gs.retry_after_ms);
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
      if (!co_await write_events(stream, req, headers_sent, std::move(last))) co_return false;
      co_return co_await end_events(stream, req);
    }
    if (!out.empty()) {
      if (g->first_sent_ns == 0) g->first_sent_ns = now_ns();
      if (!co_await write_events(stream, req, headers_sent, std::move(out))) {
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
