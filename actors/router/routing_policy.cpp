#include "actors/router/routing_policy.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "actors/prefix_reuse.hpp"
#include "actors/router/fetch_policy.hpp"

namespace tokenmill {

admission admit(uint32_t inflight, uint64_t queued_prompt_tokens, uint32_t prompt_tokens,
                const admission_limits& limits) {
  if (inflight >= limits.max_inflight) return admission::overloaded;
  // A single prompt larger than the whole budget is still admitted on an idle router:
  // the context-length check, not admission, decides whether it is too long.
  if (queued_prompt_tokens > 0 &&
      queued_prompt_tokens + prompt_tokens > limits.max_queued_prompt_tokens)
    return admission::overloaded;
  return admission::accept;
}

namespace {

/// Seconds for `n` tokens on a piecewise-linear curve (see prefill_speed::points).
double curve_seconds(const std::vector<std::pair<uint32_t, double>>& pts, uint32_t n) {
  if (n == 0) return 0;
  if (n <= pts.front().first)
    return pts.front().second * static_cast<double>(n) / static_cast<double>(pts.front().first);
  auto it = std::lower_bound(pts.begin(), pts.end(), n,
                             [](const auto& p, uint32_t v) { return p.first < v; });
  // Past the last point: the last segment's slope (or the average rate of a single point).
  if (it == pts.end()) it = std::prev(pts.end());
  const auto hi = *it;
  const auto lo = it == pts.begin() ? std::pair<uint32_t, double>{0, 0.0} : *std::prev(it);
  const double slope = (hi.second - lo.second) / static_cast<double>(hi.first - lo.first);
  return lo.second + slope * (static_cast<double>(n) - static_cast<double>(lo.first));
}

const prefill_speed& speed_of(const route_candidate& c) {
  static const prefill_speed fallback{};
  return c.speed ? *c.speed : fallback;
}

/// Prompt tokens a worker holding `overlap` leading blocks reuses (never the block of the
/// prompt's last token: prefix_reuse.hpp).
uint32_t cached_tokens(uint32_t overlap, uint32_t prompt, uint32_t block_tokens) {
  return first_computed_token(std::min(overlap, reusable_prefix_blocks(prompt, block_tokens)),
                              block_tokens);
}

double queue_seconds(const route_candidate& c) {
  const auto& s = speed_of(c);
  return s.tokens_per_s > 0 ? static_cast<double>(c.queued_tokens) / s.tokens_per_s : 0;
}

/// a beats b: lower total, then larger overlap, then lower id.
bool better(double a_total, const route_candidate& a, double b_total, const route_candidate& b) {
  if (a_total != b_total) return a_total < b_total;
  if (a.overlap_blocks != b.overlap_blocks) return a.overlap_blocks > b.overlap_blocks;
  return a.id < b.id;
}

/// The best fetch for each computing candidate (plan_route with fetch settings). The plan
/// depends on the serving worker only through its reusable overlap and its speed (it is
/// never its own source: a source must hold more than it does), so plans are shared between
/// candidates with the same two: with many workers and few that hold the prompt, most
/// candidates share one scan of the sources.
class fetch_planner {
 public:
  fetch_planner(std::span<const route_candidate> decodes, std::span<const route_candidate> prefills,
                uint32_t prompt_tokens, uint32_t block_tokens, const cost_model& model,
                const fetch_settings* settings)
      : decodes_(decodes),
        prefills_(prefills),
        prompt_(prompt_tokens),
        block_tokens_(block_tokens),
        model_(model),
        settings_(settings) {
    if (!active()) return;
    reusable_ = reusable_prefix_blocks(prompt_tokens, block_tokens);
    for (auto list : {decodes, prefills})
      for (const auto& x : list)
        if (!x.draining) best_end_ = std::max(best_end_, std::min(x.overlap_blocks, reusable_));
  }

  /// The best fetch for candidate `c` (nothing when fetching is off or nothing gains).
  fetch_plan plan(const route_candidate& c) {
    if (!active() || c.draining) return {};
    const uint32_t own = std::min(c.overlap_blocks, reusable_);
    if (own >= best_end_) return {};  // nobody holds more than it does
    for (const auto& m : memo_)
      if (m.own == own && m.speed == c.speed) return m.plan;
    if (sources_.empty()) {  // built once, and only when some candidate may fetch
      sources_.reserve(decodes_.size() + prefills_.size());
      sources_.insert(sources_.end(), decodes_.begin(), decodes_.end());
      sources_.insert(sources_.end(), prefills_.begin(), prefills_.end());
    }
    auto p = plan_fetch(c, sources_, prompt_, block_tokens_, model_, *settings_);
    memo_.push_back({own, c.speed, p});
    return p;
  }

 private:
  bool active() const {
    return settings_ && settings_->enabled && block_tokens_ > 0 && model_.kv_bytes_per_block > 0;
  }
  struct memo {
    uint32_t own;
    const prefill_speed* speed;
    fetch_plan plan;
  };
  std::span<const route_candidate> decodes_, prefills_;
  uint32_t prompt_, block_tokens_;
  const cost_model& model_;
  const fetch_settings* settings_;
  std::vector<route_candidate> sources_;
  uint32_t reusable_ = 0, best_end_ = 0;
  std::vector<memo> memo_;
};

/// How a worker that computes the prompt would do it: from the exact prefix it reuses
/// (its own, or fetched), plus its chunk hits past that prefix.
struct compute_plan {
  bool fetch = false;    ///< the fetch plan is used
  uint32_t prefix = 0;   ///< exact prefix tokens (cached or fetched)
  uint32_t chunk = 0;    ///< chunk-hit tokens past the prefix
  uint32_t saved = 0;    ///< of those, not recomputed
  double prefill_s = 0;  ///< time to compute the rest
  uint32_t reused() const { return prefix + saved; }
};

/// The cheaper of computing after its own cached prefix and after fetch plan `f` (when it
/// has a source), each with the chunk hits past that prefix. Without chunk hits the fetch
/// wins exactly when plan_fetch found a gain.
compute_plan plan_compute(const route_candidate& c, const fetch_plan& f, uint32_t own_prefix,
                          uint32_t prompt_tokens, uint32_t block_tokens, float ratio,
                          const routing_weights& w) {
  auto at = [&](uint32_t prefix) {
    compute_plan p;
    p.prefix = prefix;
    p.chunk = chunk_hit_tokens(c.chunk_hits, prefix);
    // The prompt's last position is always computed (its logits give the first token).
    const uint32_t rest = prompt_tokens > prefix ? prompt_tokens - prefix : 0;
    p.saved = std::min(chunk_credit_tokens(p.chunk, ratio), rest > 0 ? rest - 1 : 0);
    p.prefill_s = uncached_prefill_seconds(speed_of(c), prompt_tokens, p.reused());
    return p;
  };
  auto own = at(own_prefix);
  if (!f.source) return own;
  auto fetched = at(first_computed_token(f.end_block, block_tokens));
  fetched.fetch = true;
  return w.prefill * fetched.prefill_s + w.transfer * f.transfer_s < w.prefill * own.prefill_s
             ? fetched
             : own;
}

/// Records compute plan `p` (with fetch plan `f` when it uses it) in a computing
/// candidate's score: the fetched blocks and the chunk hits not recomputed count as reuse
/// (prefill of the rest only), the fetch as a transfer.
void apply_compute(candidate_score& sc, const compute_plan& p, const fetch_plan& f) {
  sc.prefill_s = p.prefill_s;
  sc.chunk_tokens = p.chunk;
  sc.chunk_saved_tokens = p.saved;
  if (!p.fetch) return;
  sc.fetch_source = f.source;
  sc.fetch_first = f.first_block;
  sc.fetch_end = f.end_block;
  sc.fetch_s = f.transfer_s;
  sc.fetch_saved_s = f.saved_s;
}

}  // namespace

uint32_t chunk_hit_tokens(std::span<const token_range> hits, uint32_t prefix) {
  uint32_t n = 0;
  for (const auto& h : hits)
    if (h.begin >= prefix && h.end > h.begin) n += h.end - h.begin;
  return n;
}

uint32_t chunk_credit_tokens(uint32_t hit_tokens, float recompute_ratio) {
  if (!(recompute_ratio < 1.0f)) return 0;  // 1 (or more, or NaN): everything is recomputed
  const double r = std::max(0.0, double{recompute_ratio});
  // As recompute_budget rounds the recomputed share.
  const auto recomputed = static_cast<uint32_t>(std::llround(r * static_cast<double>(hit_tokens)));
  return hit_tokens - std::min(hit_tokens, recomputed);
}

double uncached_prefill_seconds(const prefill_speed& s, uint32_t prompt, uint32_t cached) {
  if (cached >= prompt) return 0;
  if (s.points.empty())
    return s.tokens_per_s > 0 ? static_cast<double>(prompt - cached) / s.tokens_per_s : 0;
  return std::max(0.0, curve_seconds(s.points, prompt) - curve_seconds(s.points, cached));
}

double onboard_seconds(const route_candidate& c, uint32_t reused, const cost_model& model) {
  const uint32_t host = std::min(c.host_blocks, reused);
  const uint32_t disk = std::min(c.disk_blocks, reused - host);
  const auto bytes = static_cast<double>(model.kv_bytes_per_block);
  double s = 0;
  if (model.host_onboard_bytes_per_s > 0)
    s += static_cast<double>(host) * bytes / model.host_onboard_bytes_per_s;
  if (model.disk_onboard_bytes_per_s > 0)
    s += static_cast<double>(disk) * bytes / model.disk_onboard_bytes_per_s;
  return s;
}

route_plan plan_route(std::span<const route_candidate> decodes,
                      std::span<const route_candidate> prefills, uint32_t prompt_tokens,
                      uint32_t block_tokens, uint32_t local_prefill_threshold,
                      const cost_model& model, const fetch_settings* fetch, float recompute_ratio) {
  const auto& w = model.weights;
  route_plan plan;
  fetch_planner fetches(decodes, prefills, prompt_tokens, block_tokens, model, fetch);
  // Prefill workers: their own uncached work and the queue in front of it.
  plan.prefill_scores.reserve(prefills.size());
  std::optional<size_t> best_p;
  for (size_t i = 0; i < prefills.size(); ++i) {
    const auto& c = prefills[i];
    candidate_score sc;
    sc.id = c.id;
    sc.prefill_worker = true;
    sc.eligible = !c.draining;
    sc.cached_tokens = cached_tokens(c.overlap_blocks, prompt_tokens, block_tokens);
    sc.queue_s = queue_seconds(c);
    sc.onboard_s = block_tokens ? onboard_seconds(c, sc.cached_tokens / block_tokens, model) : 0;
    const auto f = fetches.plan(c);
    apply_compute(
        sc, plan_compute(c, f, sc.cached_tokens, prompt_tokens, block_tokens, recompute_ratio, w),
        f);
    sc.total =
        w.prefill * sc.prefill_s + w.queue * sc.queue_s + w.transfer * (sc.onboard_s + sc.fetch_s);
    plan.prefill_scores.push_back(sc);
    if (sc.eligible &&
        (!best_p || better(sc.total, c, plan.prefill_scores[*best_p].total, prefills[*best_p])))
      best_p = i;
  }
  // Decode workers: load, plus local prefill or the KV moved to it and the best prefill.
  const uint32_t prompt_blocks =
      block_tokens == 0 ? 0 : (prompt_tokens + block_tokens - 1) / block_tokens;
  const double block_s = model.kv_bytes_per_s > 0
                             ? static_cast<double>(model.kv_bytes_per_block) / model.kv_bytes_per_s
                             : 0;
  plan.decode_scores.reserve(decodes.size());
  for (size_t i = 0; i < decodes.size(); ++i) {
    const auto& c = decodes[i];
    candidate_score sc;
    sc.id = c.id;
    sc.eligible = !c.draining;
    sc.cached_tokens = cached_tokens(c.overlap_blocks, prompt_tokens, block_tokens);
    sc.load_s = static_cast<double>(c.active) * model.load_s_per_request;
    sc.onboard_s = block_tokens ? onboard_seconds(c, sc.cached_tokens / block_tokens, model) : 0;
    // A local prefill may fetch first and reuse chunks: the fetched tokens and the chunk
    // tokens not recomputed count as cached for the threshold.
    const auto f = fetches.plan(c);
    const auto p =
        plan_compute(c, f, sc.cached_tokens, prompt_tokens, block_tokens, recompute_ratio, w);
    sc.local =
        prefill_locally(prompt_tokens, p.reused(), local_prefill_threshold, best_p.has_value());
    if (sc.local) {
      apply_compute(sc, p, f);
      sc.queue_s = queue_seconds(c);
      sc.total = w.prefill * sc.prefill_s + w.queue * sc.queue_s + w.load * sc.load_s +
                 w.transfer * (sc.onboard_s + sc.fetch_s);
    } else {
      const uint32_t held = block_tokens == 0 ? 0 : sc.cached_tokens / block_tokens;
      sc.transfer_s = static_cast<double>(prompt_blocks - held) * block_s;
      sc.total = w.load * sc.load_s + w.transfer * (sc.transfer_s + sc.onboard_s) +
                 plan.prefill_scores[*best_p].total;
    }
    plan.decode_scores.push_back(sc);
    if (sc.eligible && (!plan.decode || better(sc.total, c, plan.decode_scores[*plan.decode].total,
                                               decodes[*plan.decode])))
      plan.decode = i;
  }
  if (plan.decode) {
    const auto& chosen = plan.decode_scores[*plan.decode];
    plan.cost = chosen.total;
    if (!chosen.local) plan.prefill = best_p;
  }
  return plan;
}

uint32_t computed_tokens(const route_plan& plan, uint32_t prompt_tokens, uint32_t block_tokens) {
  if (!plan.decode) return 0;
  const auto& sc =
      plan.prefill ? plan.prefill_scores[*plan.prefill] : plan.decode_scores[*plan.decode];
  uint32_t reused = sc.cached_tokens;
  if (sc.fetch_source) reused = std::max(reused, first_computed_token(sc.fetch_end, block_tokens));
  reused += sc.chunk_saved_tokens;
  return prompt_tokens - std::min(prompt_tokens, reused);
}

bool prefill_locally(uint32_t prompt_tokens, uint32_t cached_tokens, uint32_t threshold,
                     bool any_prefill_worker) {
  if (!any_prefill_worker) return true;
  if (threshold == 0) return false;
  uint32_t uncached = prompt_tokens > cached_tokens ? prompt_tokens - cached_tokens : 0;
  return uncached < threshold;
}

bool overlap_matters(bool kv_store_known, uint32_t prompt_tokens, uint32_t block_tokens,
                     size_t decode_workers, size_t prefill_workers,
                     uint32_t local_prefill_threshold) {
  if (!kv_store_known || prompt_tokens < block_tokens) return false;
  return decode_workers > 1 || prefill_workers > 1 ||
         (local_prefill_threshold > 0 && prefill_workers > 0);
}

}  // namespace tokenmill
