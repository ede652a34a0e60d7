#include "frontend/bench_connection.hpp"

#include <cstdint>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/clock.hpp"
#include "frontend/client.hpp"
#include "frontend/http_client.hpp"

namespace tokenmill::workload {

std::string describe(const error_info& e) {
  return fmt::format("{}: {}", to_string(e.code), e.message);
}

std::string http_error_text(const http_response& r) {
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() &&
      j["error"].contains("message") && j["error"]["message"].is_string())
    return fmt::format("HTTP {}: {}", r.status, j["error"]["message"].get<std::string>());
  return fmt::format("HTTP {}: {}", r.status, r.body.substr(0, 300));
}

namespace {

/// The tokenmill error code of a refused HTTP request: the body's error.code, else
/// "http_STATUS".
std::string http_error_code(const http_response& r) {
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() &&
      j["error"].contains("code") && j["error"]["code"].is_string())
    return j["error"]["code"].get<std::string>();
  return fmt::format("http_{}", r.status);
}

/// The generate call of bench request `r` with sampling `s`.
generate_params rpc_params(const bench_request& r, const sampling_params& s, bool ignore_eos) {
  generate_params p;
  p.sampling = s;
  p.has_text = r.has_text;
  if (r.has_text)
    p.text = r.prompt_text;
  else
    p.token_ids.assign(r.prompt_ids.begin(), r.prompt_ids.end());
  uint32_t begin = 0;
  for (auto end : r.segment_ends) {  // rag: the prompt as segments
    prompt_segment seg;
    seg.has_text = false;
    seg.token_ids.assign(r.prompt_ids.begin() + begin, r.prompt_ids.begin() + end);
    p.segments.push_back(std::move(seg));
    begin = end;
  }
  p.max_tokens = r.max_tokens;
  p.ignore_eos = ignore_eos;
  return p;
}

/// Keeps every token's index and arrival in `rec` (none without one).
std::function<void(const client_chunk&)> chunk_recorder(client_record* rec) {
  if (!rec) return {};
  return [rec](const client_chunk& c) {
    for (size_t k = 0; k < c.ids.size(); ++k) {
      rec->tokens.push_back({c.first_index + static_cast<uint32_t>(k), c.ids[k]});
      rec->recv_ns.push_back(c.recv_ns);
    }
  };
}

/// What the bench keeps of a generate call's outcome `res` (request `r`), into `rec` too.
request_result rpc_outcome(result<client_result>& res, const bench_request& r, client_record* rec) {
  request_result out;
  if (rec) rec->end_ns = now_ns();
  if (!res) {
    out.error = describe(res.error());
    out.error_code = std::string(to_string(res.error().code));
    if (rec) rec->outcome = std::string(to_string(res.error().code));
    return out;
  }
  if (rec) {
    rec->sent_ns = res->sent_ns;
    rec->outcome = std::string(to_string(res->server.reason));
    rec->completion_tokens = res->server.completion_tokens;
    rec->prefill_worker = res->server.prefill_worker;
    rec->decode_worker = res->server.decode_worker;
    rec->migrations = res->server.migrations;
    rec->migration_reasons = res->server.migration_reasons;
  }
  out.ok = true;
  out.ttft_ms = res->ttft_ms;
  out.itl_ms = std::move(res->itl_ms);
  out.e2e_ms = static_cast<double>(res->done_ns - res->sent_ns) / 1e6;
  out.output_tokens = static_cast<uint32_t>(res->tokens.size());
  out.prompt_tokens = res->server.prompt_tokens ? res->server.prompt_tokens : r.prompt_len;
  out.stages = std::move(res->stages);
  out.itl_parts = split_itl(res->server.steps, out.itl_ms);
  return out;
}

class rpc_connection final : public connection {
 public:
  rpc_connection(std::unique_ptr<client> c, bool ignore_eos, double timeout_s)
      : c_(std::move(c)), ignore_eos_(ignore_eos), timeout_s_(timeout_s) {}

  request_result run(const bench_request& r, const sampling_params& s,
                     client_record* rec) override {
    if (rec) rec->sent_ns = now_ns();
    auto res = c_->generate(rpc_params(r, s, ignore_eos_), chunk_recorder(rec), timeout_s_);
    if (!res) broken_ = res.error().code == errc::unavailable || res.error().code == errc::timeout;
    return rpc_outcome(res, r, rec);
  }
  bool broken() const override { return broken_; }

 private:
  std::unique_ptr<client> c_;
  bool ignore_eos_;
  double timeout_s_;
  bool broken_ = false;
};

class http_connection final : public connection {
 public:
  http_connection(std::unique_ptr<http_client> c, bool ignore_eos, double timeout_s)
      : c_(std::move(c)), ignore_eos_(ignore_eos), timeout_s_(timeout_s) {}

  request_result run(const bench_request& r, const sampling_params& s, client_record*) override {
    nlohmann::ordered_json body;
    if (r.has_text)
      body["prompt"] = r.prompt_text;
    else
      body["prompt"] = r.prompt_ids;
    const bool chat = !r.chat_parts.empty();
    if (chat) {  // rag over chat: the documents and the question as content parts
      auto parts = nlohmann::ordered_json::array();
      for (size_t k = 1; k < r.chat_parts.size(); ++k)
        parts.push_back({{"type", "text"}, {"text", r.chat_parts[k]}});
      body.erase("prompt");
      body["messages"] =
          nlohmann::ordered_json::array({{{"role", "system"}, {"content", r.chat_parts[0]}},
                                         {{"role", "user"}, {"content", std::move(parts)}}});
      if (!r.segment_ends.empty()) body["tokenmill"] = {{"chunks", "parts"}};
    } else if (!r.segment_ends.empty()) {  // rag: the prompt as segments
      auto segs = nlohmann::ordered_json::array();
      uint32_t begin = 0;
      for (auto end : r.segment_ends) {
        segs.push_back(
            std::vector<token_id>(r.prompt_ids.begin() + begin, r.prompt_ids.begin() + end));
        begin = end;
      }
      body.erase("prompt");
      body["tokenmill"] = {{"segments", std::move(segs)}};
    }
    body["max_tokens"] = r.max_tokens;
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    body["ignore_eos"] = ignore_eos_;
    body["temperature"] = s.temperature;
    if (s.seed != 0) body["seed"] = s.seed;

    request_result out;
    int64_t first_choice_ns = 0, first_text_ns = 0, last_text_ns = 0;
    uint32_t text_events = 0;
    bool done = false, usage_seen = false;
    double server_ttft_ms = -1;
    std::string stream_error, stream_error_code;
    std::vector<stage_ms> stages;
    auto on_event = [&](std::string_view data, int64_t t) {
      if (data == "[DONE]") {
        done = true;
        return;
      }
      auto j = nlohmann::ordered_json::parse(data, nullptr, false);
      if (!j.is_object()) {
        if (stream_error.empty())
          stream_error = fmt::format("an event is not a JSON object: {}", data.substr(0, 200));
        return;
      }
      if (auto e = j.find("error"); e != j.end() && stream_error.empty()) {
        stream_error = e->is_object() && e->contains("message") && (*e)["message"].is_string()
                           ? (*e)["message"].get<std::string>()
                           : e->dump();
        if (e->is_object() && e->contains("code") && (*e)["code"].is_string())
          stream_error_code = (*e)["code"].get<std::string>();
      }
      if (auto c = j.find("choices"); c != j.end() && c->is_array() && !c->empty()) {
        if (!first_choice_ns) first_choice_ns = t;
        const auto& ch = (*c)[0];
        std::string text;
        if (auto tx = ch.find("text"); tx != ch.end() && tx->is_string())
          text = tx->get<std::string>();
        if (auto d = ch.find("delta"); d != ch.end() && d->is_object())
          if (auto tx = d->find("content"); tx != d->end() && tx->is_string())
            text = tx->get<std::string>();
        if (!text.empty()) {
          if (first_text_ns)
            out.itl_ms.push_back(static_cast<double>(t - last_text_ns) / 1e6);
          else
            first_text_ns = t;
          last_text_ns = t;
          ++text_events;
        }
      }
      if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
        usage_seen = true;
        out.output_tokens = uint_field(*u, "completion_tokens");
        out.prompt_tokens = uint_field(*u, "prompt_tokens");
      }
      if (auto tm = j.find("tokenmill"); tm != j.end() && tm->is_object()) {
        if (auto s = tm->find("ttft_ms"); s != tm->end() && s->is_number())
          server_ttft_ms = s->get<double>();
        if (auto s = tm->find("stages"); s != tm->end() && s->is_object())
          for (const auto& [name, ms] : s->items())
            if (ms.is_number()) stages.push_back({name, ms.get<double>()});
      }
    };
    int64_t sent = now_ns();
    auto res = c_->post_sse(chat ? "/v1/chat/completions" : "/v1/completions", body.dump(),
                            on_event, timeout_s_);
    int64_t end = now_ns();
    if (!res) {
      out.error = describe(res.error());
      out.error_code = std::string(to_string(res.error().code));
      broken_ = true;
      return out;
    }
    if (res->status != 200) {
      out.error = http_error_text(*res);
      out.error_code = http_error_code(*res);
      return out;
    }
    if (!stream_error.empty()) {
      out.error = "error event: " + stream_error;
      out.error_code = stream_error_code.empty() ? "stream_error" : stream_error_code;
      return out;
    }
    if (!done) {
      out.error = "the event stream ended before [DONE]";
      broken_ = true;
      return out;
    }
    int64_t first = first_text_ns ? first_text_ns : first_choice_ns;
    if (!first) {
      out.error = "the event stream carried no completion";
      return out;
    }
    out.ok = true;
    out.ttft_ms = static_cast<double>(first - sent) / 1e6;
    out.e2e_ms = static_cast<double>(end - sent) / 1e6;
    if (!usage_seen) out.output_tokens = text_events;
    if (!out.prompt_tokens) out.prompt_tokens = r.prompt_len;
    if (!stages.empty()) {
      // The server's stages cover its own TTFT; the rest of the client's is both legs.
      if (server_ttft_ms >= 0) stages.push_back({"client_legs", out.ttft_ms - server_ttft_ms});
      out.stages = std::move(stages);
    }
    return out;
  }
  bool broken() const override { return broken_; }

 private:
  std::unique_ptr<http_client> c_;
  bool ignore_eos_;
  double timeout_s_;
  bool broken_ = false;
};

}  // namespace

connection_factory connection_factory_for(bool http, std::string host, uint16_t port,
                                          bool ignore_eos, double timeout_s,
                                          client_options security) {
  return [=]() -> result<std::unique_ptr<connection>> {
    if (http) {
      auto c = http_client::connect(host, port, 10);
      if (!c) return c.error();
      (*c)->set_api_key(security.api_key);
      return std::unique_ptr<connection>(
          std::make_unique<http_connection>(std::move(*c), ignore_eos, timeout_s));
    }
    auto c = client::connect(host, port, 10, security);
    if (!c) return c.error();
    return std::unique_ptr<connection>(
        std::make_unique<rpc_connection>(std::move(*c), ignore_eos, timeout_s));
  };
}

result<size_t> run_rpc_one_loop(const one_loop_spec& spec, std::span<const bench_request> reqs,
                                std::span<request_result> results,
                                std::span<client_record> records) {
  if (results.size() != reqs.size() || (!records.empty() && records.size() != reqs.size()))
    return error_info{errc::invalid_request,
                      fmt::format("one-loop bench: {} requests but {} results and {} records",
                                  reqs.size(), results.size(), records.size())};
  std::vector<std::unique_ptr<client>> owned;
  std::vector<client*> clients;
  for (size_t k = 0; k < std::min(spec.streams, reqs.size()); ++k) {
    auto c = client::connect(spec.host, spec.port, 10, spec.security);
    if (!c) return c.error();
    clients.push_back(c->get());
    owned.push_back(std::move(*c));
  }
  // A stream whose connection broke (unavailable, timeout) takes no more requests: the
  // others run the rest; what no stream is left to run fails as not run.
  size_t next_index = 0;
  std::vector<bool> broken(clients.size(), false);
  client::generate_concurrently(
      clients,
      [&](size_t k) -> std::optional<client::call> {
        if (next_index == reqs.size() || broken[k]) return std::nullopt;
        const size_t i = next_index++;
        client_record* rec = records.empty() ? nullptr : &records[i];
        if (rec) rec->sent_ns = now_ns();
        return client::call{rpc_params(reqs[i], spec.sampling_of(i), spec.ignore_eos),
                            chunk_recorder(rec), [&, i, k, rec](result<client_result> res) {
                              if (!res)
                                broken[k] = res.error().code == errc::unavailable ||
                                            res.error().code == errc::timeout;
                              results[i] = rpc_outcome(res, reqs[i], rec);
                              if (spec.on_done) spec.on_done();
                            }};
      },
      spec.timeout_s);
  for (size_t i = next_index; i < reqs.size(); ++i) {
    results[i].error = "unavailable: not run, every connection of the one-loop client broke";
    results[i].error_code = "unavailable";
    if (!records.empty()) records[i].outcome = "unavailable";
  }
  return clients.size();
}

}  // namespace tokenmill::workload
