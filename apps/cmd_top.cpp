// `tokenmill top`: a live terminal view of the cluster from the frontend's
// GET /debug/snapshot: every worker's queue, batch, KV use, share of the recent TTFT, ITL
// and transfer rate, and the worker that is the bottleneck.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/client_options.hpp"
#include "apps/commands.hpp"
#include "frontend/client.hpp"
#include "frontend/http_client.hpp"

namespace tokenmill::app {
namespace {

using nlohmann::json;

struct top_opts {
  std::string connect = "127.0.0.1:8000";
  bool once = false;
  double interval_s = 1;
  double window_s = 30;
  double timeout_s = 5;
  client_options security;  ///< --api-key only: the HTTP client speaks no TLS
};

double num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}
std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string spikes_text(const json& j) {
  auto it = j.find("itl_spikes");
  if (it == j.end() || !it->is_object() || it->empty()) return "-";
  std::string out;
  for (const auto& [k, v] : it->items())
    out += fmt::format("{}{}:{}", out.empty() ? "" : ",", k, v.get<uint64_t>());
  return out;
}

/// The snapshot as text, ending with the "bottleneck:" line.
std::string render(const json& s, const std::string& endpoint) {
  std::string out;
  out += fmt::format("tokenmill top  {}  cluster {}  {}  window {:g} s\n", endpoint,
                     str(s, "cluster").empty() ? "?" : str(s, "cluster"),
                     s.value("ready", false) ? "ready" : "NOT READY", num(s, "window_s"));
  if (!str(s, "status_error").empty()) out += fmt::format("status: {}\n", str(s, "status_error"));
  out += fmt::format(
      "requests {:g} (failed {:g})  mean TTFT {:.1f} ms  ITL p50 {:.1f} ms  p99 {:.1f} ms  "
      "spikes {}\n",
      num(s, "requests"), num(s, "failed"), num(s, "mean_ttft_ms"), num(s, "itl_p50_ms"),
      num(s, "itl_p99_ms"), spikes_text(s));
  if (s.contains("stages") && s["stages"].is_array() && !s["stages"].empty()) {
    std::string st = "TTFT stages (ms):";
    for (const auto& e : s["stages"])
      st += fmt::format(" {} {:.1f}", str(e, "name"), num(e, "ms"));
    out += st + "\n";
  }
  out += "\n";
  out += fmt::format("{:<9} {:<18} {:<8} {:<4} {:>5} {:>5} {:>17} {:>6} {:>7} {:>15} {:>8}  {}\n",
                     "ROLE", "WORKER", "NODE", "UP", "QUEUE", "RUN", "KV USED/TOTAL", "REQS",
                     "TTFT%", "ITL p50/p99 ms", "GB/s", "SPIKES");
  if (s.contains("workers") && s["workers"].is_array())
    for (const auto& w : s["workers"]) {
      const std::string role = str(w, "role");
      const double used = num(w, "kv_used"), total = num(w, "kv_total");
      std::string kv =
          total > 0 ? fmt::format("{:g}/{:g} ({:.0f}%)", used, total, 100.0 * used / total) : "-";
      std::string itl =
          role == "decode" && num(w, "requests") > 0
              ? fmt::format("{:.1f}/{:.1f}", num(w, "itl_p50_ms"), num(w, "itl_p99_ms"))
              : "-";
      std::string gbps =
          num(w, "transfer_gbps") > 0 ? fmt::format("{:.2f}", num(w, "transfer_gbps")) : "-";
      std::string share =
          num(w, "requests") > 0 ? fmt::format("{:.0f}%", 100.0 * num(w, "ttft_share")) : "-";
      out += fmt::format(
          "{:<9} {:<18} {:<8} {:<4} {:>5g} {:>5g} {:>17} {:>6g} {:>7} {:>15} {:>8}  {}\n", role,
          str(w, "name"), str(w, "node"), w.value("up", true) ? "up" : "DOWN", num(w, "queued"),
          num(w, "running"), kv, num(w, "requests"), share, itl, gbps,
          role == "decode" ? spikes_text(w) : "-");
    }
  out += "\n";
  if (s.contains("routing") && s["routing"].is_object()) {
    // The newest routing decision: the chosen plan first, then the cheapest others.
    const auto& r = s["routing"];
    std::vector<json> cands;
    if (r.contains("candidates") && r["candidates"].is_array())
      for (const auto& c : r["candidates"])
        cands.push_back(c);
    std::stable_sort(cands.begin(), cands.end(), [](const json& a, const json& b) {
      const bool ca = a.value("chosen", false), cb = b.value("chosen", false);
      if (ca != cb) return ca;
      return num(a, "total_ms") < num(b, "total_ms");
    });
    out += fmt::format(
        "routing: {:g} of {:g} requests to a cached prefix; last decision "
        "(request {:g}), cost in ms:\n",
        num(s, "routed_cached"), num(s, "requests"), num(r, "request"));
    constexpr size_t shown = 6;
    for (size_t i = 0; i < cands.size() && i < shown; ++i) {
      const auto& c = cands[i];
      out += fmt::format(
          "  {} {:<7} {:<18} {:>8.2f} = prefill {:.2f} + queue {:.2f} + transfer {:.2f} + load "
          "{:.2f}{}  cached {:g}{}\n",
          c.value("chosen", false) ? "*" : " ", str(c, "role"), str(c, "worker"),
          num(c, "total_ms"), num(c, "prefill_ms"), num(c, "queue_ms"), num(c, "transfer_ms"),
          num(c, "load_ms"),
          str(c, "role") == "decode" && !c.value("local", false) ? " + best prefill" : "",
          num(c, "cached_tokens"),
          c.value("eligible", true) ? (c.value("local", false) ? "  local prefill" : "")
                                    : "  (draining)");
    }
    if (cands.size() > shown) out += fmt::format("  ... {} more\n", cands.size() - shown);
    out += "\n";
  }
  if (s.contains("planner") && s["planner"].is_object()) {
    const auto& p = s["planner"];
    if (p.value("enabled", false) || (p.contains("events") && !p["events"].empty())) {
      out += fmt::format(
          "planner {}: {:g} decisions, flips prefill->decode {:g}, "
          "decode->prefill {:g}, drained {:g}, failed {:g}\n",
          p.value("enabled", false) ? "on" : "off", num(p, "decisions"), num(p, "flips_to_decode"),
          num(p, "flips_to_prefill"), num(p, "drains"), num(p, "changes_failed"));
      if (!str(p, "last_decision").empty())
        out += fmt::format("  last: {}\n", str(p, "last_decision"));
      // The last few role changes (the status keeps more).
      if (p.contains("events") && p["events"].is_array()) {
        const auto& evs = p["events"];
        size_t from = evs.size() > 4 ? evs.size() - 4 : 0;
        for (size_t i = from; i < evs.size(); ++i)
          out += fmt::format("  {:<7} {:<18} {} -> {}  {}\n", str(evs[i], "kind"),
                             str(evs[i], "worker"), str(evs[i], "from"), str(evs[i], "to"),
                             str(evs[i], "why"));
      }
      out += "\n";
    }
  }
  const std::string b = str(s, "bottleneck");
  if (!b.empty())
    out += "bottleneck: " + b + "\n";
  else {
    std::string note = str(s, "bottleneck_note");
    if (note.rfind("none", 0) == 0) note = note.substr(4);
    while (!note.empty() && note.front() == ' ')
      note.erase(0, 1);
    out += "bottleneck: none " + (note.empty() ? std::string("(nothing stands out)") : note) + "\n";
  }
  return out;
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "tokenmill top: %s\n", msg.c_str());
  return 1;
}

}  // namespace

command add_top(CLI::App& app) {
  auto o = std::make_shared<top_opts>();
  app.add_option("--connect", o->connect, "The frontend's HTTP address HOST:PORT")
      ->capture_default_str();
  add_client_options(app, o->security, false);
  app.add_flag("--once", o->once, "Print one snapshot and exit");
  app.add_option("--interval", o->interval_s, "Seconds between refreshes")
      ->capture_default_str()
      ->check(CLI::Range(0.05, 3600.0));
  app.add_option("--window", o->window_s, "Aggregate the requests of the last S seconds")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 86400.0));
  app.add_option("--timeout", o->timeout_s, "Seconds to wait for the server")
      ->capture_default_str();
  return [o]() -> int {
    auto ep = parse_endpoint(o->connect);
    if (!ep) return fail(ep.error().message);
    resolve_client_options(o->security);
    const bool tty = ::isatty(STDOUT_FILENO) != 0;
    const std::string target = fmt::format("/debug/snapshot?window={:g}", o->window_s);
    std::unique_ptr<http_client> c;
    for (;;) {
      std::string text, error;
      if (!c) {
        auto r = http_client::connect(ep->first, ep->second, o->timeout_s);
        if (r) {
          c = std::move(*r);
          c->set_api_key(o->security.api_key);
        } else
          error = fmt::format("cannot connect to {}: {}", o->connect, r.error().message);
      }
      if (c) {
        auto r = c->request("GET", target, {}, "", {}, o->timeout_s);
        if (!r) {
          error = fmt::format("GET {}: {}", target, r.error().message);
          c.reset();
        } else if (r->status != 200) {
          error = fmt::format("GET {}: HTTP {}: {}", target, r->status, r->body.substr(0, 300));
        } else {
          auto j = json::parse(r->body, nullptr, false);
          if (!j.is_object())
            error = fmt::format("GET {}: the answer is not a JSON object", target);
          else
            text = render(j, o->connect);
        }
      }
      if (o->once) {
        if (!error.empty()) return fail(error);
        std::fputs(text.c_str(), stdout);
        std::fflush(stdout);
        return 0;
      }
      if (tty) std::fputs("\x1b[H\x1b[2J", stdout);
      if (!error.empty())
        std::printf("tokenmill top: %s (retrying every %g s)\n", error.c_str(), o->interval_s);
      else
        std::fputs(text.c_str(), stdout);
      if (!tty) std::fputs("\n", stdout);
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::duration<double>(o->interval_s));
    }
  };
}

}  // namespace tokenmill::app
