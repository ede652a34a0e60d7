#include "frontend/completion_text.hpp"

#include <algorithm>

namespace tokenmill {

completion_text::completion_text(std::shared_ptr<const tokenizer> tok,
                                 std::vector<std::string> stop_strings)
    : tok_(std::move(tok)), stops_(std::move(stop_strings)) {}

std::string completion_text::push(token_id t) {
  if (stops_.matched() || finished_) return {};
  ++tokens_;
  return stops_.push(detok_.push(tok_->piece(t)));
}

std::string completion_text::finish() {
  if (finished_ || stops_.matched()) return {};
  finished_ = true;
  std::string out = stops_.push(detok_.finish());
  out += stops_.finish();
  return out;
}

generation_summary make_generation_summary(const request_summary& r, bool stopped, uint32_t written,
                                           int64_t first_sent_ns, uint32_t node) {
  generation_summary g;
  g.id = r.id;
  g.reason = r.reason;
  g.error_code = r.error.code;
  g.error = r.error.message;
  g.prompt_tokens = r.prompt_tokens;
  g.completion_tokens = r.completion_tokens;
  if (stopped) {
    // Cancelled by the frontend because of a stop string: for the client a normal stop.
    g.reason = finish_reason::stop;
    g.error_code = errc::ok;
    g.error.clear();
    g.completion_tokens = written;
  }
  g.itl_mean_ms = r.itl_mean_ms;
  g.itl_p50_ms = r.itl_p50_ms;
  g.itl_p99_ms = r.itl_p99_ms;
  g.prefill_worker = r.prefill_worker;
  g.decode_worker = r.decode_worker;
  g.itl_spikes = r.itl_spikes;
  g.steps = r.steps;
  g.migrations = r.migrations;
  g.migration_reasons = r.migration_reasons;
  g.routing = r.routing;
  g.retry_after_ms = r.retry_after_ms;
  trace tr = r.tr;
  if (first_sent_ns != 0) tr.stamp_at(stage::first_token_sent, first_sent_ns, node);
  auto b = ttft_breakdown(tr);
  for (const auto& i : b)
    g.stages.push_back({std::string(i.name()), i.duration_ns / 1e6});
  if (first_sent_ns != 0) g.ttft_ms = total_ns(b) / 1e6;
  std::stable_sort(tr.hops.begin(), tr.hops.end(),
                   [](const hop& a, const hop& b) { return a.t_ns < b.t_ns; });
  g.hops = tr.hops;
  return g;
}

}  // namespace tokenmill
