#include "frontend/request_log.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "common/clock.hpp"
#include "common/stats.hpp"

namespace tokenmill {

using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

std::optional<itl_cause> itl_cause_from_string(std::string_view name) {
  for (size_t i = 0; i < kItlCauses; ++i)
    if (to_string(static_cast<itl_cause>(i)) == name) return static_cast<itl_cause>(i);
  return std::nullopt;
}

// ------------------------------------------------------------------ JSON

ojson to_json(const generation_summary& g) {
  ojson j;
  j["id"] = g.id;
  j["reason"] = std::string(to_string(g.reason));
  j["error_code"] = std::string(to_string(g.error_code));
  j["error"] = g.error;
  j["prompt_tokens"] = g.prompt_tokens;
  j["completion_tokens"] = g.completion_tokens;
  j["ttft_ms"] = g.ttft_ms;
  j["itl_mean_ms"] = g.itl_mean_ms;
  j["itl_p50_ms"] = g.itl_p50_ms;
  j["itl_p99_ms"] = g.itl_p99_ms;
  j["stages"] = ojson::array();
  for (const auto& s : g.stages)
    j["stages"].push_back(ojson{{"name", s.name}, {"ms", s.ms}});
  j["hops"] = ojson::array();
  for (const auto& h : g.hops)
    j["hops"].push_back(
        ojson{{"stage", std::string(to_string(h.where))}, {"node", h.node}, {"t_ns", h.t_ns}});
  j["prefill_worker"] = g.prefill_worker;
  j["decode_worker"] = g.decode_worker;
  j["itl_spikes"] = ojson::object();
  for (size_t i = 0; i < g.itl_spikes.size() && i < kItlCauses; ++i)
    if (g.itl_spikes[i] != 0)
      j["itl_spikes"][std::string(to_string(static_cast<itl_cause>(i)))] = g.itl_spikes[i];
  j["steps"] = ojson::array();
  for (const auto& s : g.steps)
    j["steps"].push_back(ojson{{"index", s.index},
                               {"released_ns", s.released_ns},
                               {"step_start_ns", s.step_start_ns},
                               {"step_end_ns", s.step_end_ns},
                               {"batch", s.batch},
                               {"prefill_tokens", s.prefill_tokens},
                               {"cause", std::string(to_string(s.cause))}});
  j["migrations"] = g.migrations;
  j["migration_reasons"] = g.migration_reasons;
  j["routing"] = ojson::array();
  for (const auto& r : g.routing)
    j["routing"].push_back(ojson{{"worker", r.worker},
                                 {"role", r.prefill ? "prefill" : "decode"},
                                 {"chosen", r.chosen},
                                 {"eligible", r.eligible},
                                 {"local", r.local},
                                 {"cached_tokens", r.cached_tokens},
                                 {"prefill_ms", r.prefill_ms},
                                 {"queue_ms", r.queue_ms},
                                 {"transfer_ms", r.transfer_ms},
                                 {"load_ms", r.load_ms},
                                 {"total_ms", r.total_ms}});
  return j;
}

namespace {
template <class T>
void get_num(const json& j, const char* key, T& out) {
  auto it = j.find(key);
  if (it != j.end() && it->is_number()) out = it->get<T>();
}
void get_str(const json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it != j.end() && it->is_string()) out = it->get<std::string>();
}
}  // namespace

std::optional<generation_summary> summary_from_json(const json& j) {
  if (!j.is_object()) return std::nullopt;
  generation_summary g;
  get_num(j, "id", g.id);
  std::string s;
  get_str(j, "reason", s);
  if (auto r = finish_reason_from_string(s)) g.reason = *r;
  s.clear();
  get_str(j, "error_code", s);
  if (!s.empty()) g.error_code = errc_from_string(s);
  get_str(j, "error", g.error);
  get_num(j, "prompt_tokens", g.prompt_tokens);
  get_num(j, "completion_tokens", g.completion_tokens);
  get_num(j, "ttft_ms", g.ttft_ms);
  get_num(j, "itl_mean_ms", g.itl_mean_ms);
  get_num(j, "itl_p50_ms", g.itl_p50_ms);
  get_num(j, "itl_p99_ms", g.itl_p99_ms);
  if (auto it = j.find("stages"); it != j.end() && it->is_array())
    for (const auto& e : *it) {
      if (!e.is_object()) continue;
      stage_ms st;
      get_str(e, "name", st.name);
      get_num(e, "ms", st.ms);
      g.stages.push_back(std::move(st));
    }
  if (auto it = j.find("hops"); it != j.end() && it->is_array())
    for (const auto& e : *it) {
      if (!e.is_object()) continue;
      std::string name;
      get_str(e, "stage", name);
      auto where = stage_from_string(name);
      if (!where) continue;
      hop h;
      h.where = *where;
      get_num(e, "node", h.node);
      get_num(e, "t_ns", h.t_ns);
      g.hops.push_back(h);
    }
  get_str(j, "prefill_worker", g.prefill_worker);
  get_str(j, "decode_worker", g.decode_worker);
  get_num(j, "migrations", g.migrations);
  if (auto it = j.find("migration_reasons"); it != j.end() && it->is_array())
    for (const auto& e : *it)
      if (e.is_string()) g.migration_reasons.push_back(e.get<std::string>());
  if (auto it = j.find("routing"); it != j.end() && it->is_array())
    for (const auto& e : *it) {
      if (!e.is_object()) continue;
      routing_score r;
      get_str(e, "worker", r.worker);
      std::string role_name;
      get_str(e, "role", role_name);
      r.prefill = role_name == "prefill";
      auto flag = [&](const char* key, bool& out) {
        if (auto f = e.find(key); f != e.end() && f->is_boolean()) out = f->get<bool>();
      };
      flag("chosen", r.chosen);
      flag("eligible", r.eligible);
      flag("local", r.local);
      get_num(e, "cached_tokens", r.cached_tokens);
      get_num(e, "prefill_ms", r.prefill_ms);
      get_num(e, "queue_ms", r.queue_ms);
      get_num(e, "transfer_ms", r.transfer_ms);
      get_num(e, "load_ms", r.load_ms);
      get_num(e, "total_ms", r.total_ms);
      g.routing.push_back(std::move(r));
    }
  if (auto it = j.find("itl_spikes"); it != j.end() && it->is_object())
    for (const auto& [k, v] : it->items()) {
      auto c = itl_cause_from_string(k);
      if (!c || !v.is_number()) continue;
      g.itl_spikes.resize(kItlCauses);
      g.itl_spikes[static_cast<size_t>(*c)] = v.get<uint32_t>();
    }
  if (auto it = j.find("steps"); it != j.end() && it->is_array())
    for (const auto& e : *it) {
      if (!e.is_object()) continue;
      step_record r;
      get_num(e, "index", r.index);
      get_num(e, "released_ns", r.released_ns);
      get_num(e, "step_start_ns", r.step_start_ns);
      get_num(e, "step_end_ns", r.step_end_ns);
      get_num(e, "batch", r.batch);
      get_num(e, "prefill_tokens", r.prefill_tokens);
      std::string c;
      get_str(e, "cause", c);
      r.cause = itl_cause_from_string(c).value_or(itl_cause::none);
      g.steps.push_back(r);
    }
  return g;
}

ojson to_json(const request_record& r) {
  ojson j = to_json(r.summary);
  j["api"] = r.api;
  j["arrival_unix_ms"] = r.arrival_unix_ms;
  j["arrival_ns"] = r.arrival_ns;
  j["end_ns"] = r.end_ns;
  j["e2e_ms"] = (r.end_ns - r.arrival_ns) / 1e6;
  return j;
}

std::optional<request_record> record_from_json(const json& j) {
  auto g = summary_from_json(j);
  if (!g) return std::nullopt;
  request_record r;
  r.summary = std::move(*g);
  get_str(j, "api", r.api);
  get_num(j, "arrival_unix_ms", r.arrival_unix_ms);
  get_num(j, "arrival_ns", r.arrival_ns);
  get_num(j, "end_ns", r.end_ns);
  return r;
}

// ------------------------------------------------------------------ snapshot

namespace {

double stage_of(const generation_summary& g, std::string_view name) {
  double ms = 0;
  for (const auto& s : g.stages)
    if (s.name == name) ms += s.ms;
  return ms;
}

bool is_prefill_stage(std::string_view n) {
  return n == "prefill_queue" || n == "prefill_compute" || n == "kv_transfer";
}
bool is_decode_stage(std::string_view n) {
  return n == "decode_reserve" || n == "decode_join" || n == "to_router";
}
bool is_router_stage(std::string_view n) {
  return n == "frontend_to_router" || n == "routing" || n == "to_prefill";
}

struct accum {
  uint32_t requests = 0;
  double stage = 0, pq = 0, pc = 0, kt = 0, dr = 0, tr = 0;
  uint64_t prompt_tokens = 0, prefill_requests = 0;
  double transfer_bytes = 0, transfer_ms = 0;
  uint64_t tokens = 0;
  std::vector<double> gaps, p50s, p99s;
  spike_counts spikes{};
};

}  // namespace

cluster_snapshot make_snapshot(const std::vector<request_record>& records, double window_s,
                               const cluster_status* status, int64_t now, uint32_t block_tokens,
                               uint64_t block_bytes) {
  cluster_snapshot s;
  s.window_s = window_s;
  if (status) {
    s.has_status = true;
    s.cluster = status->cluster;
    s.ready = status->ready;
    for (const auto& w : status->workers) {
      worker_snapshot ws;
      ws.name = w.name;
      ws.node = w.node;
      ws.kind = w.kind;
      ws.in_status = true;
      ws.up = w.up;
      ws.queued = w.queued;
      ws.running = w.running;
      ws.kv_used = w.kv_used;
      ws.kv_total = w.kv_total;
      s.workers.push_back(std::move(ws));
    }
  }
  auto find_worker = [&](const std::string& name, role kind) -> size_t {
    for (size_t i = 0; i < s.workers.size(); ++i)
      if (s.workers[i].name == name) return i;
    worker_snapshot ws;
    ws.name = name;
    ws.kind = kind;
    s.workers.push_back(std::move(ws));
    return s.workers.size() - 1;
  };
  std::optional<size_t> router;
  for (size_t i = 0; i < s.workers.size(); ++i)
    if (s.workers[i].kind == role::router) router = router ? std::optional<size_t>() : i;

  std::map<size_t, accum> acc;
  std::vector<std::string> stage_order;
  std::map<std::string, double> stage_sum;
  std::vector<double> ttfts, all_gaps, all_p50, all_p99;
  const int64_t since = now - static_cast<int64_t>(window_s * 1e9);
  int64_t routing_end = std::numeric_limits<int64_t>::min();
  for (const auto& r : records) {
    if (r.end_ns < since || r.end_ns > now + int64_t(1e9)) continue;
    const auto& g = r.summary;
    if (g.error_code != errc::ok || g.reason == finish_reason::cancelled || g.ttft_ms <= 0) {
      ++s.failed;
      continue;
    }
    ++s.requests;
    ttfts.push_back(g.ttft_ms);
    if (!g.routing.empty()) {
      if (std::any_of(g.routing.begin(), g.routing.end(),
                      [](const routing_score& c) { return c.chosen && c.cached_tokens > 0; }))
        ++s.routed_cached;
      if (r.end_ns >= routing_end) {
        routing_end = r.end_ns;
        s.routing_request = g.id;
        s.routing = g.routing;
      }
    }
    for (const auto& st : g.stages) {
      if (!stage_sum.count(st.name)) stage_order.push_back(st.name);
      stage_sum[st.name] += st.ms;
    }
    for (size_t i = 0; i < g.itl_spikes.size() && i < kItlCauses; ++i)
      s.spikes[i] += g.itl_spikes[i];
    // ITL gaps from the steps (released times), else the request's own stats.
    std::vector<double> gaps;
    {
      auto steps = g.steps;
      std::sort(steps.begin(), steps.end(),
                [](const step_record& a, const step_record& b) { return a.index < b.index; });
      for (size_t i = 1; i < steps.size(); ++i)
        if (steps[i].index == steps[i - 1].index + 1 && steps[i].released_ns > 0 &&
            steps[i - 1].released_ns > 0)
          gaps.push_back((steps[i].released_ns - steps[i - 1].released_ns) / 1e6);
    }
    all_gaps.insert(all_gaps.end(), gaps.begin(), gaps.end());
    if (g.completion_tokens > 1) {
      all_p50.push_back(g.itl_p50_ms);
      all_p99.push_back(g.itl_p99_ms);
    }
    const double pq = stage_of(g, "prefill_queue"), pc = stage_of(g, "prefill_compute"),
                 kt = stage_of(g, "kv_transfer");
    if (!g.decode_worker.empty()) {
      auto& a = acc[find_worker(g.decode_worker, role::decode)];
      ++a.requests;
      a.dr += stage_of(g, "decode_reserve");
      a.tr += stage_of(g, "to_router");
      a.tokens += g.completion_tokens;
      for (const auto& st : g.stages)
        if (is_decode_stage(st.name) || (g.prefill_worker.empty() && is_prefill_stage(st.name)))
          a.stage += st.ms;
      a.gaps.insert(a.gaps.end(), gaps.begin(), gaps.end());
      if (g.completion_tokens > 1) {
        a.p50s.push_back(g.itl_p50_ms);
        a.p99s.push_back(g.itl_p99_ms);
      }
      for (size_t i = 0; i < g.itl_spikes.size() && i < kItlCauses; ++i)
        a.spikes[i] += g.itl_spikes[i];
      if (g.prefill_worker.empty()) {
        a.pq += pq;
        a.pc += pc;
        a.prompt_tokens += g.prompt_tokens;
        ++a.prefill_requests;
      }
    }
    if (!g.prefill_worker.empty()) {
      auto& a = acc[find_worker(g.prefill_worker, role::prefill)];
      ++a.requests;
      ++a.prefill_requests;
      a.pq += pq;
      a.pc += pc;
      a.kt += kt;
      a.stage += pq + pc + kt;
      a.prompt_tokens += g.prompt_tokens;
      if (kt > 0 && block_tokens > 0 && block_bytes > 0) {
        a.transfer_bytes +=
            double((g.prompt_tokens + block_tokens - 1) / block_tokens) * double(block_bytes);
        a.transfer_ms += kt;
      }
    }
    if (router) {
      auto& a = acc[*router];
      ++a.requests;
      for (const auto& st : g.stages)
        if (is_router_stage(st.name)) a.stage += st.ms;
    }
  }
  if (s.requests > 0) {
    double sum = 0;
    for (double t : ttfts)
      sum += t;
    s.mean_ttft_ms = sum / s.requests;
    for (const auto& n : stage_order)
      s.stages.push_back({n, stage_sum[n] / s.requests});
  }
  if (!all_gaps.empty()) {
    s.itl_p50_ms = percentile(all_gaps, 0.5);
    s.itl_p99_ms = percentile(all_gaps, 0.99);
  } else {
    s.itl_p50_ms = percentile(all_p50, 0.5);
    s.itl_p99_ms = percentile(all_p99, 0.99);
  }
  for (auto& [i, a] : acc) {
    auto& w = s.workers[i];
    w.requests = a.requests;
    if (a.requests == 0) continue;
    const double n = a.requests;
    w.stage_ms = a.stage / n;
    if (s.requests > 0 && s.mean_ttft_ms > 0)
      w.ttft_share = a.stage / (double(s.requests) * s.mean_ttft_ms);
    if (a.prefill_requests > 0) {
      const double pn = double(a.prefill_requests);
      w.prefill_queue_ms = a.pq / pn;
      w.prefill_compute_ms = a.pc / pn;
      w.kv_transfer_ms = a.kt / pn;
      if (a.prompt_tokens > 0) w.compute_ms_per_1k_tokens = a.pc / double(a.prompt_tokens) * 1e3;
    }
    if (a.transfer_ms > 0) w.transfer_gbps = a.transfer_bytes / (a.transfer_ms / 1e3) / 1e9;
    w.decode_reserve_ms = a.dr / n;
    w.to_router_ms = a.tr / n;
    w.tokens = a.tokens;
    w.spikes = a.spikes;
    if (!a.gaps.empty()) {
      w.itl_p50_ms = percentile(a.gaps, 0.5);
      w.itl_p99_ms = percentile(a.gaps, 0.99);
    } else if (!a.p50s.empty()) {
      w.itl_p50_ms = percentile(a.p50s, 0.5);
      w.itl_p99_ms = percentile(a.p99s, 0.99);
    }
  }
  return s;
}

namespace {
ojson spikes_json(const spike_counts& c) {
  ojson j = ojson::object();
  for (size_t i = 1; i < kItlCauses; ++i)
    if (c[i] != 0) j[std::string(to_string(static_cast<itl_cause>(i)))] = c[i];
  return j;
}
double round3(double v) {
  return std::round(v * 1e3) / 1e3;
}
}  // namespace

ojson to_json(const cluster_snapshot& s) {
  ojson j;
  j["window_s"] = s.window_s;
  j["cluster"] = s.cluster;
  j["ready"] = s.ready;
  j["has_status"] = s.has_status;
  if (!s.status_error.empty()) j["status_error"] = s.status_error;
  j["requests"] = s.requests;
  j["failed"] = s.failed;
  j["mean_ttft_ms"] = round3(s.mean_ttft_ms);
  j["itl_p50_ms"] = round3(s.itl_p50_ms);
  j["itl_p99_ms"] = round3(s.itl_p99_ms);
  j["stages"] = ojson::array();
  for (const auto& st : s.stages)
    j["stages"].push_back(ojson{{"name", st.name}, {"ms", round3(st.ms)}});
  j["itl_spikes"] = spikes_json(s.spikes);
  j["workers"] = ojson::array();
  for (const auto& w : s.workers) {
    ojson o;
    o["name"] = w.name;
    o["role"] = std::string(to_string(w.kind));
    o["node"] = w.node;
    o["in_status"] = w.in_status;
    o["up"] = w.up;
    o["queued"] = w.queued;
    o["running"] = w.running;
    o["kv_used"] = w.kv_used;
    o["kv_total"] = w.kv_total;
    o["requests"] = w.requests;
    o["stage_ms"] = round3(w.stage_ms);
    o["ttft_share"] = round3(w.ttft_share);
    if (w.kind == role::prefill || w.compute_ms_per_1k_tokens > 0) {
      o["prefill_queue_ms"] = round3(w.prefill_queue_ms);
      o["prefill_compute_ms"] = round3(w.prefill_compute_ms);
      o["kv_transfer_ms"] = round3(w.kv_transfer_ms);
      o["compute_ms_per_1k_tokens"] = round3(w.compute_ms_per_1k_tokens);
      o["transfer_gbps"] = round3(w.transfer_gbps);
    }
    if (w.kind == role::decode) {
      o["decode_reserve_ms"] = round3(w.decode_reserve_ms);
      o["to_router_ms"] = round3(w.to_router_ms);
      o["itl_p50_ms"] = round3(w.itl_p50_ms);
      o["itl_p99_ms"] = round3(w.itl_p99_ms);
      o["tokens"] = w.tokens;
      o["itl_spikes"] = spikes_json(w.spikes);
    }
    j["workers"].push_back(std::move(o));
  }
  j["routed_cached"] = s.routed_cached;
  if (!s.routing.empty()) {
    ojson r;
    r["request"] = s.routing_request;
    r["candidates"] = ojson::array();
    for (const auto& c : s.routing)
      r["candidates"].push_back(ojson{{"worker", c.worker},
                                      {"role", c.prefill ? "prefill" : "decode"},
                                      {"chosen", c.chosen},
                                      {"eligible", c.eligible},
                                      {"local", c.local},
                                      {"cached_tokens", c.cached_tokens},
                                      {"prefill_ms", round3(c.prefill_ms)},
                                      {"queue_ms", round3(c.queue_ms)},
                                      {"transfer_ms", round3(c.transfer_ms)},
                                      {"load_ms", round3(c.load_ms)},
                                      {"total_ms", round3(c.total_ms)}});
    j["routing"] = std::move(r);
  }
  return j;
}

// ------------------------------------------------------------------ the log

request_log::request_log(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}

void request_log::record(std::string_view api, const generation_summary& g, double e2e_s,
                         int64_t end_ns) {
  request_record r;
  r.summary = g;
  r.api = std::string(api);
  r.end_ns = end_ns != 0 ? end_ns : now_ns();
  r.arrival_ns = r.end_ns - static_cast<int64_t>(e2e_s * 1e9);
  auto wall_now = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  r.arrival_unix_ms =
      wall_now - static_cast<int64_t>(e2e_s * 1e3) - (now_ns() - r.end_ns) / 1000000;
  record(std::move(r));
}

void request_log::record(request_record r) {
  std::lock_guard lock(mu_);
  if (ring_.size() >= capacity_) ring_.pop_front();
  ring_.push_back(std::move(r));
}

std::vector<request_record> request_log::recent(size_t limit) const {
  std::lock_guard lock(mu_);
  const size_t n = std::min(limit, ring_.size());
  return {ring_.end() - static_cast<std::ptrdiff_t>(n), ring_.end()};
}

size_t request_log::size() const {
  std::lock_guard lock(mu_);
  return ring_.size();
}

void request_log::set_block_layout(uint32_t block_tokens, uint64_t block_bytes) {
  std::lock_guard lock(mu_);
  block_tokens_ = block_tokens;
  block_bytes_ = block_bytes;
}

cluster_snapshot request_log::snapshot(double window_s, const cluster_status* status) const {
  std::vector<request_record> copy;
  uint32_t bt = 0;
  uint64_t bb = 0;
  {
    std::lock_guard lock(mu_);
    copy.assign(ring_.begin(), ring_.end());
    bt = block_tokens_;
    bb = block_bytes_;
  }
  return make_snapshot(copy, window_s, status, now_ns(), bt, bb);
}

}  // namespace tokenmill
