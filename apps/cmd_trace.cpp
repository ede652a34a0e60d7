// `tokenmill trace`: the frontend's recent requests (GET /debug/requests) as a
// Chrome/Perfetto trace file.
#include <cstdio>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/client_options.hpp"
#include "apps/commands.hpp"
#include "frontend/client.hpp"
#include "frontend/http_client.hpp"
#include "frontend/request_log.hpp"
#include "frontend/trace_export.hpp"

namespace tokenmill::app {
namespace {

struct trace_opts {
  std::string connect = "127.0.0.1:8000";
  std::string out;
  uint32_t limit = 1000;
  double timeout_s = 10;
  client_options security;  ///< --api-key only: the HTTP client speaks no TLS
};

int fail(const std::string& msg) {
  std::fprintf(stderr, "tokenmill trace: %s\n", msg.c_str());
  return 1;
}

}  // namespace

command add_trace(CLI::App& app) {
  auto o = std::make_shared<trace_opts>();
  app.add_option("--connect", o->connect, "The frontend's HTTP address HOST:PORT")
      ->capture_default_str();
  add_client_options(app, o->security, false);
  app.add_option("--out", o->out, "The trace file to write (JSON)")->required();
  app.add_option("--limit", o->limit, "The newest N finished requests")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000000u));
  app.add_option("--timeout", o->timeout_s, "Seconds to wait for the server")
      ->capture_default_str();
  return [o]() -> int {
    auto ep = parse_endpoint(o->connect);
    if (!ep) return fail(ep.error().message);
    resolve_client_options(o->security);
    auto c = http_client::connect(ep->first, ep->second, o->timeout_s);
    if (!c) return fail(fmt::format("cannot connect to {}: {}", o->connect, c.error().message));
    (*c)->set_api_key(o->security.api_key);
    const std::string target = fmt::format("/debug/requests?limit={}", o->limit);
    auto r = (*c)->request("GET", target, {}, "", {}, o->timeout_s);
    if (!r) return fail(fmt::format("GET {} from {}: {}", target, o->connect, r.error().message));
    if (r->status != 200)
      return fail(fmt::format("GET {} from {}: HTTP {}: {}", target, o->connect, r->status,
                              r->body.substr(0, 300)));
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    if (!j.is_object() || !j.contains("requests") || !j["requests"].is_array())
      return fail(fmt::format("{} answered {} with something other than {{\"requests\": [...]}}",
                              o->connect, target));
    std::vector<request_record> reqs;
    for (const auto& e : j["requests"]) {
      auto rec = record_from_json(e);
      if (!rec) return fail(fmt::format("{}: a request that is not a JSON object", target));
      reqs.push_back(std::move(*rec));
    }
    // The planner's role changes, when the status has any (a failure here only loses them).
    std::vector<planner_event> planner;
    if (auto s = (*c)->request("GET", "/debug/snapshot?window=1", {}, "", {}, o->timeout_s);
        s && s->status == 200) {
      auto sj = nlohmann::json::parse(s->body, nullptr, false);
      if (sj.is_object() && sj.contains("planner") && sj["planner"].contains("events"))
        for (const auto& e : sj["planner"]["events"]) {
          planner_event ev;
          ev.t_ns = e.value("t_ns", int64_t{0});
          ev.kind = e.value("kind", std::string());
          ev.worker = e.value("worker", std::string());
          ev.from = role_from_string(e.value("from", std::string())).value_or(role::decode);
          ev.to = role_from_string(e.value("to", std::string())).value_or(role::decode);
          ev.took_ns = static_cast<int64_t>(e.value("took_ms", 0.0) * 1e6);
          ev.why = e.value("why", std::string());
          planner.push_back(std::move(ev));
        }
    }
    trace_export_stats stats;
    auto trace = chrome_trace(reqs, planner, &stats);
    {
      std::ofstream out(o->out, std::ios::binary | std::ios::trunc);
      if (!out) return fail(fmt::format("cannot write {}", o->out));
      out << trace.dump() << "\n";
      out.close();
      if (!out) return fail(fmt::format("cannot write {}", o->out));
    }
    std::printf(
        "tokenmill trace: wrote %zu requests, %zu events to %s; open it in "
        "https://ui.perfetto.dev or chrome://tracing\n",
        stats.requests, stats.events, o->out.c_str());
    return 0;
  };
}

}  // namespace tokenmill::app
