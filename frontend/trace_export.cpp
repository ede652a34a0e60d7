#include "frontend/trace_export.hpp"

#include <algorithm>
#include <limits>
#include <map>
#include <string>
#include <tuple>

#include <fmt/format.h>

namespace tokenmill {

using ojson = nlohmann::ordered_json;

namespace {

struct event {
  uint32_t node = 0;
  std::string track;  ///< base track name; lanes are added when events overlap
  std::string name;
  char ph = 'X';
  int64_t t0 = 0, t1 = 0;  ///< ns on the trace's clock
  ojson args;
  std::string cat;
};

/// The track an interval ending at `s` belongs to.
std::string track_of(stage s, const generation_summary& g) {
  const std::string decode = g.decode_worker.empty() ? "decode" : g.decode_worker;
  switch (s) {
    case stage::client_sent:
    case stage::arrived:
    case stage::first_token_sent:
    case stage::first_token_client:
      return "frontend";
    case stage::router_received:
    case stage::routed:
    case stage::first_token_router:
      return "router";
    case stage::prefill_queued:
    case stage::prefill_started:
    case stage::prefill_done:
    case stage::kv_pushed:
      return g.prefill_worker.empty() ? decode : g.prefill_worker;
    default:
      return decode;
  }
}

std::optional<hop> first_hop(const generation_summary& g, stage s) {
  std::optional<hop> h;
  for (const auto& x : g.hops)
    if (x.where == s && (!h || x.t_ns < h->t_ns)) h = x;
  return h;
}

void add_request(const generation_summary& g, int64_t end_ns, std::vector<event>& out,
                 std::map<std::tuple<uint32_t, std::string, int64_t, int64_t>, size_t>& steps) {
  // TTFT stages: the first stamp of each TTFT-path stage, in causal order.
  std::vector<hop> path;
  for (size_t k = 0; k <= static_cast<size_t>(stage::first_token_client); ++k)
    if (auto h = first_hop(g, static_cast<stage>(k))) path.push_back(*h);
  const std::string id = fmt::format("{}", g.id);
  for (size_t i = 1; i < path.size(); ++i) {
    event e;
    e.node = path[i].node;
    e.track = track_of(path[i].where, g);
    e.name = std::string(interval_name(path[i].where));
    e.cat = "ttft";
    e.t0 = path[i - 1].t_ns;
    e.t1 = std::max(path[i].t_ns, e.t0);
    e.args = ojson{{"request", id},
                   {"from", std::string(to_string(path[i - 1].where))},
                   {"to", std::string(to_string(path[i].where))}};
    // The routing decision: every candidate's cost-model score, on the routing slice.
    if (path[i].where == stage::routed && !g.routing.empty()) {
      auto& r = e.args["candidates"] = ojson::array();
      for (const auto& c : g.routing)
        r.push_back(ojson{{"worker", c.worker},
                          {"role", c.prefill ? "prefill" : "decode"},
                          {"chosen", c.chosen},
                          {"eligible", c.eligible},
                          {"local", c.local},
                          {"cached_tokens", c.cached_tokens},
                          {"prefill_ms", c.prefill_ms},
                          {"queue_ms", c.queue_ms},
                          {"transfer_ms", c.transfer_ms},
                          {"load_ms", c.load_ms},
                          {"total_ms", c.total_ms}});
    }
    out.push_back(std::move(e));
  }
  // The decode worker's node: any of its stamps.
  uint32_t decode_node = path.empty() ? 0 : path.front().node;
  for (stage s : {stage::decode_reserved, stage::kv_ready, stage::decode_admitted, stage::finished})
    if (auto h = first_hop(g, s)) {
      decode_node = h->node;
      break;
    }
  const std::string decode = g.decode_worker.empty() ? "decode" : g.decode_worker;
  for (const auto& st : g.steps) {
    if (st.step_start_ns > 0 && st.step_end_ns >= st.step_start_ns) {
      auto key = std::make_tuple(decode_node, decode, st.step_start_ns, st.step_end_ns);
      auto it = steps.find(key);
      if (it == steps.end()) {
        event e;
        e.node = decode_node;
        e.track = decode;
        e.name = "decode step";
        e.cat = "decode";
        e.t0 = st.step_start_ns;
        e.t1 = st.step_end_ns;
        e.args = ojson{{"batch", st.batch},
                       {"prefill_tokens", st.prefill_tokens},
                       {"cause", std::string(to_string(st.cause))},
                       {"tokens", ojson::object()}};
        steps.emplace(key, out.size());
        out.push_back(std::move(e));
        it = steps.find(key);
      }
      auto& a = out[it->second].args;
      a["tokens"][id] = st.index;
      if (st.cause != itl_cause::none) a["cause"] = std::string(to_string(st.cause));
    }
    if (st.cause != itl_cause::none) {
      event e;
      e.node = decode_node;
      e.track = decode;
      e.name = fmt::format("itl spike: {}", to_string(st.cause));
      e.cat = "itl";
      e.ph = 'i';
      e.t0 = e.t1 = st.released_ns > 0 ? st.released_ns : st.step_end_ns;
      e.args =
          ojson{{"request", id}, {"token", st.index}, {"cause", std::string(to_string(st.cause))}};
      out.push_back(std::move(e));
    }
  }
  // The request: arrival to finish (its last stamp, step or the frontend's end).
  std::optional<int64_t> t0, t1;
  uint32_t node = 0;
  if (auto h = first_hop(g, stage::arrived)) t0 = h->t_ns, node = h->node;
  for (const auto& h : g.hops) {
    if (!t0 || h.t_ns < *t0) {
      if (!first_hop(g, stage::arrived)) t0 = h.t_ns, node = h.node;
    }
    if (!t1 || h.t_ns > *t1) t1 = h.t_ns;
  }
  for (const auto& st : g.steps)
    if (st.released_ns > 0 && (!t1 || st.released_ns > *t1)) t1 = st.released_ns;
  if (end_ns > 0 && t0 && end_ns > *t0 && (!t1 || end_ns > *t1)) t1 = end_ns;
  if (t0) {
    event e;
    e.node = node;
    e.track = "requests";
    e.name = fmt::format("request {}", id);
    e.cat = "request";
    e.t0 = *t0;
    e.t1 = std::max(*t1, *t0);
    e.args = ojson{{"id", id},
                   {"reason", std::string(to_string(g.reason))},
                   {"prompt_tokens", g.prompt_tokens},
                   {"completion_tokens", g.completion_tokens},
                   {"ttft_ms", g.ttft_ms},
                   {"itl_p50_ms", g.itl_p50_ms},
                   {"itl_p99_ms", g.itl_p99_ms},
                   {"prefill_worker", g.prefill_worker},
                   {"decode_worker", g.decode_worker}};
    if (g.error_code != errc::ok) e.args["error"] = g.error;
    out.push_back(std::move(e));
  }
}

int track_rank(const std::string& t) {
  if (t == "planner") return 0;
  if (t == "requests") return 0;
  if (t == "frontend") return 1;
  if (t == "router") return 2;
  return 3;
}

/// The planner's decisions and role changes on a "planner" track of node 0 (where the
/// supervisor runs beside the router): a decided flip or drain is an instant, a finished or
/// failed change a span from change_role to its end.
void add_planner(const std::vector<planner_event>& planner, std::vector<event>& out) {
  for (const auto& p : planner) {
    event e;
    e.track = "planner";
    e.cat = "planner";
    e.t1 = p.t_ns;
    const auto fromto = fmt::format("{} -> {}", to_string(p.from), to_string(p.to));
    if (p.kind == "changed" || p.kind == "failed") {
      e.ph = 'X';
      e.t0 = p.t_ns - std::max<int64_t>(p.took_ns, 0);
      e.name =
          fmt::format("{} {} {}", p.kind == "failed" ? "failed" : "role change", p.worker, fromto);
    } else {
      e.ph = 'i';
      e.t0 = p.t_ns;
      e.name = fmt::format("{} {} {}", p.kind, p.worker, fromto);
    }
    e.args =
        ojson{{"kind", p.kind}, {"worker", p.worker}, {"why", p.why}, {"took_ms", p.took_ns / 1e6}};
    out.push_back(std::move(e));
  }
}

ojson build(const std::vector<std::pair<const generation_summary*, int64_t>>& reqs,
            trace_export_stats* stats, const std::vector<planner_event>* planner = nullptr) {
  std::vector<event> events;
  std::map<std::tuple<uint32_t, std::string, int64_t, int64_t>, size_t> steps;
  for (const auto& [g, end] : reqs)
    add_request(*g, end, events, steps);
  if (planner) add_planner(*planner, events);
  int64_t origin = std::numeric_limits<int64_t>::max();
  for (const auto& e : events)
    origin = std::min(origin, e.t0);
  if (events.empty()) origin = 0;
  // Lanes: events sorted by start (longer first on ties) go to the first lane of their
  // track whose open events they nest in.
  std::sort(events.begin(), events.end(), [](const event& a, const event& b) {
    return std::tie(a.t0, b.t1) < std::tie(b.t0, a.t1);
  });
  struct lane {
    std::vector<int64_t> open;  ///< end times of the enclosing events, innermost last
  };
  std::map<std::pair<uint32_t, std::string>, std::vector<lane>> lanes;
  std::map<std::pair<uint32_t, std::string>, int> tids;  ///< (node, lane name) -> tid
  std::map<uint32_t, int> next_tid;
  ojson out_events = ojson::array();
  auto tid_of = [&](uint32_t node, const std::string& lane_name) {
    auto key = std::make_pair(node, lane_name);
    auto it = tids.find(key);
    if (it != tids.end()) return it->second;
    int tid = ++next_tid[node];
    tids.emplace(key, tid);
    return tid;
  };
  ojson body = ojson::array();
  for (const auto& e : events) {
    auto& ls = lanes[{e.node, e.track}];
    size_t k = 0;
    if (e.ph == 'X') {
      for (; k < ls.size(); ++k) {
        auto& open = ls[k].open;
        while (!open.empty() && open.back() <= e.t0)
          open.pop_back();
        if (open.empty() || e.t1 <= open.back()) break;
      }
      if (k == ls.size()) ls.emplace_back();
      ls[k].open.push_back(e.t1);
    }
    const std::string lane_name = k == 0 ? e.track : fmt::format("{} #{}", e.track, k + 1);
    ojson j;
    j["name"] = e.name;
    j["cat"] = e.cat;
    j["ph"] = std::string(1, e.ph);
    j["ts"] = double(e.t0 - origin) / 1e3;
    if (e.ph == 'X') j["dur"] = double(e.t1 - e.t0) / 1e3;
    if (e.ph == 'i') j["s"] = "t";
    j["pid"] = e.node + 1;
    j["tid"] = tid_of(e.node, lane_name);
    j["args"] = e.args;
    body.push_back(std::move(j));
  }
  // Metadata: process and thread names, frontend/router first.
  std::vector<std::pair<std::pair<uint32_t, std::string>, int>> named(tids.begin(), tids.end());
  std::map<uint32_t, bool> procs;
  for (const auto& [key, tid] : named)
    procs[key.first] = true;
  for (const auto& [node, _] : procs) {
    out_events.push_back(ojson{{"name", "process_name"},
                               {"ph", "M"},
                               {"pid", node + 1},
                               {"tid", 0},
                               {"args", {{"name", fmt::format("node {}", node)}}}});
    out_events.push_back(ojson{{"name", "process_sort_index"},
                               {"ph", "M"},
                               {"pid", node + 1},
                               {"tid", 0},
                               {"args", {{"sort_index", node}}}});
  }
  for (const auto& [key, tid] : named) {
    out_events.push_back(ojson{{"name", "thread_name"},
                               {"ph", "M"},
                               {"pid", key.first + 1},
                               {"tid", tid},
                               {"args", {{"name", key.second}}}});
    auto base = key.second.substr(0, key.second.find(" #"));
    out_events.push_back(ojson{{"name", "thread_sort_index"},
                               {"ph", "M"},
                               {"pid", key.first + 1},
                               {"tid", tid},
                               {"args", {{"sort_index", track_rank(base) * 1000 + tid}}}});
  }
  if (stats) {
    stats->requests = reqs.size();
    stats->events = body.size();
  }
  for (auto& e : body)
    out_events.push_back(std::move(e));
  ojson out;
  out["traceEvents"] = std::move(out_events);
  out["displayTimeUnit"] = "ms";
  out["otherData"] = ojson{{"generator", "tokenmill trace"}, {"origin_ns", origin}};
  return out;
}

}  // namespace

ojson chrome_trace(const std::vector<request_record>& requests, trace_export_stats* stats) {
  return chrome_trace(requests, {}, stats);
}

ojson chrome_trace(const std::vector<request_record>& requests,
                   const std::vector<planner_event>& planner, trace_export_stats* stats) {
  std::vector<std::pair<const generation_summary*, int64_t>> v;
  for (const auto& r : requests)
    v.emplace_back(&r.summary, r.end_ns);
  return build(v, stats, &planner);
}

ojson chrome_trace(const std::vector<generation_summary>& requests, trace_export_stats* stats) {
  std::vector<std::pair<const generation_summary*, int64_t>> v;
  for (const auto& g : requests)
    v.emplace_back(&g, 0);
  return build(v, stats);
}

}  // namespace tokenmill
