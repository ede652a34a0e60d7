// Generation over HTTP: one /v1/completions or /v1/chat/completions request from the
// router's token chunks to a JSON body or an SSE stream, and the disconnect watcher that
// cancels the request when its client goes away. A request may fan out to several
// sequences (a list of prompts, n > 1, best_of): each is its own router request, and the
// response has one choice per returned sequence, by index.
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <random>
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

/// One sequence of the request as the response builds it.
struct choice_state {
  std::shared_ptr<http_detail::gen_state> g;
  uint32_t prompt = 0;  ///< index of its prompt
  uint32_t sample = 0;  ///< index among its prompt's sequences (seed + sample)
  std::string echo;     ///< the prompt's text, when echo is on
  std::string text;     ///< whole responses: the text so far
  std::vector<openai::logprob_entry> logprobs;  ///< whole: all; streamed: not yet sent
  uint32_t text_offset = 0;
  double cumulative_logprob = 0;  ///< sum of the chosen tokens' logprobs (best_of)
  bool finished = false;          ///< its summary was turned into the response
  generation_summary gs;
  /// Chat with tools: the parser its text goes through, and the calls found (whole
  /// responses: all; streamed: how many were sent).
  std::optional<openai::tool_call_stream> tools;
  std::vector<openai::tool_call> calls;
  uint32_t calls_sent = 0;
};

/// "call_" and 24 random hex digits, as OpenAI's ids look.
std::string new_call_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("call_{:016x}{:08x}", rng(), static_cast<uint32_t>(rng()));
}

}  // namespace

awaitable<void> http_detail::watch_disconnect(std::shared_ptr<beast::tcp_stream> stream,
                                              std::vector<std::shared_ptr<gen_state>> gs) {
  beast::error_code ec;
  co_await stream->socket().async_wait(tcp::socket::wait_read,
                                       asio::redirect_error(use_awaitable, ec));
  if (ec) co_return;
  bool all_done = true;
  for (const auto& g : gs)
    all_done = all_done && g->summary.has_value();
  if (all_done) co_return;
  char b = 0;
  auto n = ::recv(stream->socket().native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
    for (const auto& g : gs)
      g->disconnected = true;
    gs.front()->wake->cancel();
  }
  // n > 0: the client pipelined its next request; nothing more to learn here.
}

std::shared_ptr<http_detail::gen_state> http_server::core::submit(
    const std::shared_ptr<asio::steady_timer>& wake, const validated_request& v,
    uint64_t seed_offset) {
  auto g = std::make_shared<http_detail::gen_state>(wake, tok, v.stop_strings);
  g->id = (uint64_t{cfg.node} << 48) | (uint64_t{1} << 47) | ++next_id;
  gens.emplace(g->id, g);
  generate_request gr;
  gr.id = g->id;
  gr.prompt = v.prompt;
  gr.options = v.options;
  gr.options.sampling.seed += seed_offset;
  gr.tr.id = g->id;
  gr.tr.stamp(stage::arrived, cfg.node);
  gr.client = bridge;
  caf::anon_send(router, std::move(gr));
  metrics->started("http");
  return g;
}

void http_server::core::drop(http_detail::gen_state& g, int64_t arrived) {
  cancel(g);
  generation_summary gs;
  gs.id = g.id;
  gs.reason = finish_reason::cancelled;
  metrics->finished("http", gs, (now_ns() - arrived) / 1e9);
  gens.erase(g.id);
}

template <class Stream>
awaitable<bool> http_server::core::generate(Stream& stream, request_t& req, openai::endpoint kind) {
  auto parsed = openai::parse_request(kind, req.body(), ctx);
  if (auto* e = std::get_if<openai::api_error>(&parsed)) {
    metrics->refused("http", errc::invalid_request);
    openai::api_error err = std::move(*e);
    co_return co_await reply_error(stream, req, std::move(err));
  }
  auto& p = std::get<openai::parsed_request>(parsed);
  const bool want_logprobs = p.params.top_logprobs >= 0;
  // best_of > n ranks sequences by cumulative logprob, so they need the chosen token's.
  const bool rank = p.best_of > p.n;
  std::vector<validated_request> valid;
  std::vector<choice_state> choices;
  for (uint32_t i = 0; i < p.prompts.size(); ++i) {
    auto params = p.prompts[i];
    if (rank && params.top_logprobs < 0) params.top_logprobs = 0;
    auto v = validate(params, *tok, model);
    if (!v) {
      metrics->refused("http", v.error().code);
      auto msg = p.prompts.size() > 1 ? fmt::format("prompt {}: {}", i, v.error().message)
                                      : v.error().message;
      auto err = openai::from_errc(v.error().code, std::move(msg));
      co_return co_await reply_error(stream, req, std::move(err));
    }
    for (uint32_t j = 0; j < p.best_of; ++j) {
      choice_state c;
      c.prompt = i;
      c.sample = j;
      if (p.echo) {
        if (params.has_text) {
          c.echo = params.text;
        } else {
          for (auto t : v->prompt)
            c.echo += tok->piece(t);
        }
      }
      if (p.tool_parse) c.tools.emplace(*p.tool_parse, p.max_tool_calls());
      choices.push_back(std::move(c));
    }
    valid.push_back(std::move(*v));
  }
  const int64_t arrived = now_ns();
  // One wake timer for every sequence: a chunk or summary of any of them wakes the loop.
  auto wake = std::make_shared<asio::steady_timer>(io, asio::steady_timer::time_point::max());
  std::vector<std::shared_ptr<http_detail::gen_state>> all;
  for (auto& c : choices) {
    c.g = submit(wake, valid[c.prompt], c.sample);  // sequence j of a prompt: seed + j
    all.push_back(c.g);
  }
  watch_disconnect(stream, std::move(all));

  openai::response_meta meta;
  meta.kind = kind;
  meta.id = fmt::format("{}-{:x}", kind == openai::endpoint::chat_completions ? "chatcmpl" : "cmpl",
                        choices.front().g->id);
  meta.created = unix_time_s();
  meta.model = model.name;
  const bool chat = kind == openai::endpoint::chat_completions;
  const bool sse = p.stream;
  bool headers_sent = false;
  auto index_of = [&](const choice_state& c) { return c.prompt * p.n + c.sample; };
  auto piece_of = [this](token_id t) { return tok->piece(t); };
  auto lp_arg = [&](choice_state& c) { return want_logprobs ? &c.logprobs : nullptr; };

  // "tool_calls" when the choice's output held calls, as OpenAI reports it.
  auto finish_of = [](const choice_state& c) -> std::string_view {
    if (!c.calls.empty() || c.calls_sent > 0) return "tool_calls";
    return openai::finish_reason_name(c.gs.reason);
  };
  // Streamed text of choice `c` (`last`: its end): content deltas for text outside tool
  // calls, one delta per call once the parser has all of it. Logprobs ride on the next
  // content delta, or a delta of their own at the end.
  auto stream_text = [&](choice_state& c, std::string_view text, bool last) -> std::string {
    std::string out;
    std::string content(text);
    std::vector<openai::tool_call> calls;
    if (c.tools) {
      auto ev = c.tools->push(text);
      content = std::move(ev.content);
      calls = std::move(ev.calls);
      if (last) {
        auto tail = c.tools->finish();
        content += tail.content;
        for (auto& call : tail.calls)
          calls.push_back(std::move(call));
      }
    }
    if (!content.empty() || (last && !c.logprobs.empty())) {
      out += openai::sse_event(
          openai::stream_chunk(meta, index_of(c), content, false, "", p.include_usage, lp_arg(c)));
      c.logprobs.clear();
    }
    if (!calls.empty()) {
      for (auto& call : calls)
        call.id = new_call_id();
      out += openai::sse_event(
          openai::tool_calls_chunk(meta, index_of(c), calls, c.calls_sent, p.include_usage));
      c.calls_sent += static_cast<uint32_t>(calls.size());
    }
    return out;
  };

  auto abandon = [&]() {
    // The client is gone: stop every sequence everywhere and free their KV blocks.
    for (auto& c : choices)
      if (!c.finished) drop(*c.g, arrived);
    wake->cancel();
  };
  // The first write opens every choice: its role (chat) or its echoed prompt.
  auto write_raw = [&](std::string data) -> awaitable<bool> {
    if (!headers_sent) {
      std::string head;
      for (const auto& c : choices) {
        if (chat)
          head += openai::sse_event(
              openai::stream_chunk(meta, index_of(c), "", true, "", p.include_usage));
        else if (!c.echo.empty())
          head += openai::sse_event(
              openai::stream_chunk(meta, index_of(c), c.echo, false, "", p.include_usage));
      }
      data = head + data;
    }
    co_return co_await write_events(stream, req, headers_sent, std::move(data));
  };

  for (;;) {
    if (stopping || std::any_of(choices.begin(), choices.end(),
                                [](const choice_state& c) { return c.g->disconnected; })) {
      abandon();
      co_return false;
    }
    std::string events;
    bool all_finished = true;
    errc failed = errc::ok;
    std::string failure;
    uint32_t retry_after_ms = 0;
    for (auto& c : choices) {
      if (c.finished) continue;
      auto& g = *c.g;
      auto lps = std::exchange(g.pending_logprobs, {});
      auto toks = std::exchange(g.pending, {});
      for (size_t k = 0; k < toks.size(); ++k) {
        const token_id t = toks[k];
        std::string piece = g.text.push(t);
        if (k < lps.size()) {
          c.cumulative_logprob += lps[k].logprob;
          if (want_logprobs) {
            c.logprobs.push_back(openai::make_logprob_entry(t, lps[k], piece_of, c.text_offset));
            c.text_offset += static_cast<uint32_t>(c.logprobs.back().token.size());
          }
        }
        if (g.first_sent_ns == 0 && !sse) g.first_sent_ns = now_ns();
        if (sse) {
          events += stream_text(c, piece, false);
        } else {
          c.text += piece;
        }
        if (g.text.stopped()) {
          cancel(g);  // the text reached a stop string: this token ends the completion
          break;
        }
      }
      if (!g.summary) {
        all_finished = false;
        continue;
      }
      std::string tail = g.text.finish();
      if (sse) {
        events += stream_text(c, tail, true);
      } else {
        c.text += tail;
        if (c.tools) {
          auto out = openai::parse_tool_calls(*p.tool_parse, c.text, p.max_tool_calls());
          c.text = std::move(out.content);
          c.calls = std::move(out.calls);
          for (auto& call : c.calls)
            call.id = new_call_id();
        }
      }
      if (sse && !events.empty() && g.first_sent_ns == 0) g.first_sent_ns = now_ns();
      c.gs = make_generation_summary(*g.summary, g.text.stopped(), g.text.tokens(), g.first_sent_ns,
                                     cfg.node);
      c.finished = true;
      gens.erase(g.id);
      metrics->finished("http", c.gs, (now_ns() - arrived) / 1e9);
      if (c.gs.error_code != errc::ok && failed == errc::ok) {
        failed = c.gs.error_code;
        failure = c.gs.error;
        retry_after_ms = c.gs.retry_after_ms;
      } else if (sse && c.gs.error_code == errc::ok) {
        events += openai::sse_event(
            openai::stream_chunk(meta, index_of(c), "", false, finish_of(c), p.include_usage));
      }
    }
    if (failed != errc::ok) {
      // One sequence failed: the request fails (the others are cancelled).
      for (auto& c : choices)
        if (!c.finished) cancel(*c.g);
    }
    if (all_finished || failed != errc::ok) {
      for (auto& c : choices)
        if (!c.finished) {
          drop(*c.g, arrived);  // cancelled above because a sibling failed
          c.finished = true;
        }
      beast::error_code ignored;
      // Ends the disconnect watcher.
      beast::get_lowest_layer(stream).socket().cancel(ignored);
      if (failed != errc::ok && !headers_sent) {
        // Nothing was sent yet: the error gets its own status (429 overloaded, 503, ...).
        auto err = http_detail::failure_error(failed, std::move(failure), retry_after_ms);
        co_return co_await reply_error(stream, req, std::move(err));
      }
      // Usage: each prompt once, every generated sequence's tokens; timing of the first.
      generation_summary total = choices.front().gs;
      total.prompt_tokens = 0;
      total.completion_tokens = 0;
      for (const auto& c : choices) {
        if (c.sample == 0) total.prompt_tokens += c.gs.prompt_tokens;
        total.completion_tokens += c.gs.completion_tokens;
      }
      if (!sse) {
        // best_of: the n sequences of each prompt with the highest cumulative logprob.
        std::vector<const choice_state*> picked;
        for (uint32_t i = 0; i < p.prompts.size(); ++i) {
          std::vector<const choice_state*> mine;
          for (const auto& c : choices)
            if (c.prompt == i) mine.push_back(&c);
          if (rank)
            std::stable_sort(mine.begin(), mine.end(), [](auto* a, auto* b) {
              return a->cumulative_logprob > b->cumulative_logprob;
            });
          mine.resize(std::min<size_t>(mine.size(), p.n));
          picked.insert(picked.end(), mine.begin(), mine.end());
        }
        std::vector<openai::choice_body> out;
        for (size_t k = 0; k < picked.size(); ++k) {
          const auto* c = picked[k];
          out.push_back({static_cast<uint32_t>(k), c->echo + c->text, finish_of(*c),
                         want_logprobs ? &c->logprobs : nullptr, c->tools ? &c->calls : nullptr});
        }
        std::string body = openai::completion_body(meta, out, total);
        co_return co_await reply(stream, req, http::status::ok, std::move(body));
      }
      if (failed != errc::ok) {
        events += openai::sse_event(openai::error_body(openai::from_errc(failed, failure)));
      } else if (p.include_usage) {
        events += openai::sse_event(openai::usage_chunk(meta, total));
      }
      events += openai::sse_done;
      if (!co_await write_raw(std::move(events))) co_return false;
      co_return co_await end_events(stream, req);
    }
    if (!events.empty()) {
      for (auto& c : choices)
        if (c.g->first_sent_ns == 0) c.g->first_sent_ns = now_ns();
      if (!co_await write_raw(std::move(events))) {
        abandon();
        co_return false;
      }
      continue;  // more may have arrived while writing
    }
    beast::error_code ec;
    co_await wake->async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

template awaitable<bool> http_server::core::generate(beast::tcp_stream&, request_t&,
                                                     openai::endpoint);
template awaitable<bool> http_server::core::generate(http_detail::tls_stream&, request_t&,
                                                     openai::endpoint);

}  // namespace tokenmill
