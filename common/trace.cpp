#include "common/trace.hpp"

#include <array>

#include "common/clock.hpp"

namespace tokenmill {

std::string_view to_string(stage s) {
  switch (s) {
    case stage::client_sent:
      return "client_sent";
    case stage::arrived:
      return "arrived";
    case stage::router_received:
      return "router_received";
    case stage::routed:
      return "routed";
    case stage::decode_reserved:
      return "decode_reserved";
    case stage::prefill_queued:
      return "prefill_queued";
    case stage::prefill_started:
      return "prefill_started";
    case stage::prefill_done:
      return "prefill_done";
    case stage::kv_pushed:
      return "kv_pushed";
    case stage::first_token_released:
      return "first_token_released";
    case stage::first_token_router:
      return "first_token_router";
    case stage::first_token_sent:
      return "first_token_sent";
    case stage::first_token_client:
      return "first_token_client";
    case stage::kv_ready:
      return "kv_ready";
    case stage::decode_admitted:
      return "decode_admitted";
    case stage::finished:
      return "finished";
    case stage::migrated:
      return "migrated";
    case stage::count_:
      break;
  }
  return "unknown";
}

std::optional<stage> stage_from_string(std::string_view name) {
  for (int i = 0; i < static_cast<int>(stage::count_); ++i)
    if (to_string(static_cast<stage>(i)) == name) return static_cast<stage>(i);
  return std::nullopt;
}

std::string_view interval_name(stage s) {
  switch (s) {
    case stage::client_sent:
      return "client_sent";
    case stage::arrived:
      return "client_to_frontend";
    case stage::router_received:
      return "frontend_to_router";
    case stage::routed:
      return "routing";
    case stage::decode_reserved:
      return "decode_reserve";
    case stage::prefill_queued:
      return "to_prefill";
    case stage::prefill_started:
      return "prefill_queue";
    case stage::prefill_done:
      return "prefill_compute";
    case stage::kv_pushed:
      return "kv_transfer";
    case stage::first_token_released:
      return "decode_join";
    case stage::first_token_router:
      return "to_router";
    case stage::first_token_sent:
      return "router_to_frontend";
    case stage::first_token_client:
      return "frontend_to_client";
    case stage::kv_ready:
      return "kv_ready";
    case stage::decode_admitted:
      return "decode_admission";
    case stage::finished:
      return "decode";
    case stage::migrated:
      return "migration";
    case stage::count_:
      break;
  }
  return "unknown";
}

void trace::stamp(stage s, uint32_t node) {
  hops.push_back(hop{s, node, now_ns()});
}

void trace::stamp_at(stage s, int64_t t_ns, uint32_t node) {
  hops.push_back(hop{s, node, t_ns});
}

void trace::merge(const trace& other) {
  hops.insert(hops.end(), other.hops.begin(), other.hops.end());
}

std::optional<int64_t> trace::time_of(stage s) const {
  for (const auto& h : hops)
    if (h.where == s) return h.t_ns;
  return std::nullopt;
}

std::vector<stage_interval> ttft_breakdown(const trace& t, const clock_offsets& offsets) {
  constexpr auto n = static_cast<size_t>(stage::first_token_client) + 1;
  std::array<std::optional<int64_t>, n> first{};
  for (const auto& h : t.hops) {
    if (!on_ttft_path(h.where)) continue;
    auto& slot = first[static_cast<size_t>(h.where)];
    if (slot) continue;
    int64_t off = h.node < offsets.size() ? offsets[h.node] : 0;
    slot = h.t_ns + off;
  }
  std::vector<stage_interval> out;
  std::optional<int64_t> prev;
  for (size_t i = 0; i < n; ++i) {
    if (!first[i]) continue;
    if (prev) out.push_back(stage_interval{static_cast<stage>(i), *first[i] - *prev});
    prev = first[i];
  }
  return out;
}

int64_t total_ns(const std::vector<stage_interval>& intervals) {
  int64_t sum = 0;
  for (const auto& i : intervals)
    sum += i.duration_ns;
  return sum;
}

}  // namespace tokenmill
