#include "engine/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

namespace tokenmill {
namespace {

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// A uniform draw in [0, 1) that depends only on (seed, position).
double uniform01(uint64_t seed, uint64_t position) {
  uint64_t z = mix64(seed + 0x9e3779b97f4a7c15ULL * (position + 1));
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

struct candidate {
  float logit;
  token_id id;
};

/// Higher logit first; the lower id wins ties, so the order is total and deterministic.
bool before(const candidate& a, const candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

}  // namespace

sample_history make_history(std::span<const token_id> context, size_t prompt_len,
                            const sampling_params& params) {
  prompt_len = std::min(prompt_len, context.size());
  return {context, prompt_len - std::min<size_t>(params.resumed, prompt_len)};
}

bool adjusts_logits(const sampling_params& p) {
  return !p.logit_bias.empty() || p.presence_penalty != 0 || p.frequency_penalty != 0 ||
         p.repetition_penalty != 1;
}

void adjust_logits(std::span<float> logits, const sampling_params& p,
                   const sample_history& history) {
  const size_t vocab = logits.size();
  for (const auto& b : p.logit_bias)
    if (b.token >= 0 && static_cast<size_t>(b.token) < vocab) logits[b.token] += b.bias;
  if (p.repetition_penalty != 1 && p.repetition_penalty > 0) {
    // Once per distinct token of the prompt or the output.
    thread_local std::vector<token_id> seen;
    seen.assign(history.context.begin(), history.context.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (token_id t : seen) {
      if (t < 0 || static_cast<size_t>(t) >= vocab) continue;
      float& x = logits[t];
      x = x > 0 ? x / p.repetition_penalty : x * p.repetition_penalty;
    }
  }
  if (p.presence_penalty != 0 || p.frequency_penalty != 0) {
    std::unordered_map<token_id, uint32_t> counts;
    const size_t begin = std::min(history.output_begin, history.context.size());
    for (size_t i = begin; i < history.context.size(); ++i)
      ++counts[history.context[i]];
    for (const auto& [t, n] : counts) {
      if (t < 0 || static_cast<size_t>(t) >= vocab) continue;
      logits[t] -= p.frequency_penalty * static_cast<float>(n) + p.presence_penalty;
    }
  }
}

void compute_logprobs(std::span<const float> raw, token_id chosen, int32_t top_n,
                      token_logprobs& out) {
  out.top.clear();
  out.logprob = -std::numeric_limits<float>::infinity();
  float top = -std::numeric_limits<float>::infinity();
  for (float x : raw)
    if (!std::isnan(x) && x > top) top = x;
  if (!std::isfinite(top)) return;  // no possible token
  double sum = 0;
  for (float x : raw)
    if (!std::isnan(x)) sum += std::exp(static_cast<double>(x) - top);
  const double lse = top + std::log(sum);
  auto lp = [&](float x) {
    return std::isnan(x) ? -std::numeric_limits<float>::infinity()
                         : static_cast<float>(static_cast<double>(x) - lse);
  };
  if (chosen >= 0 && static_cast<size_t>(chosen) < raw.size()) out.logprob = lp(raw[chosen]);
  if (top_n <= 0) return;
  thread_local std::vector<candidate> cands;
  cands.clear();
  for (size_t i = 0; i < raw.size(); ++i)
    if (!std::isnan(raw[i])) cands.push_back({raw[i], static_cast<token_id>(i)});
  const size_t n = std::min(cands.size(), static_cast<size_t>(top_n));
  std::partial_sort(cands.begin(), cands.begin() + static_cast<ptrdiff_t>(n), cands.end(), before);
  out.top.reserve(n);
  for (size_t i = 0; i < n; ++i)
    out.top.push_back({cands[i].id, lp(cands[i].logit)});
}

namespace {

token_id sample_adjusted(std::span<const float> logits, const sampling_params& params,
                         uint64_t position);

}  // namespace

token_id greedy_token(std::span<const float> logits) {
  const size_t n = logits.size();
  if (n == 0) return 0;
  const float* x = logits.data();
  // Pass 1: the largest non-NaN logit (NaN compares false and never replaces a lane's
  // maximum). `x > m ? x : m` is maxps's rule, so the compiler may vectorize it exactly.
  constexpr size_t lanes = 16;
  float m[lanes];
  std::fill(m, m + lanes, -std::numeric_limits<float>::infinity());
  size_t i = 0;
  for (; i + lanes <= n; i += lanes)
    for (size_t l = 0; l < lanes; ++l)
      m[l] = x[i + l] > m[l] ? x[i + l] : m[l];
  for (; i < n; ++i)
    m[0] = x[i] > m[0] ? x[i] : m[0];
  float best = m[0];
  for (size_t l = 1; l < lanes; ++l)
    best = m[l] > best ? m[l] : best;
  // Pass 2: its lowest id (-0 equals +0 here as in the scan's comparison; -inf is found when
  // every non-NaN logit is -inf). Nothing equals it only when every logit is NaN.
  for (i = 0; i < n; ++i)
    if (x[i] == best) return static_cast<token_id>(i);
  return static_cast<token_id>(n - 1);
}

void apply_token_mask(std::span<float> logits, std::span<const uint64_t> allowed) {
  if (allowed.empty()) return;
  const size_t n = std::min(logits.size(), allowed.size() * 64);
  for (size_t w = 0; w * 64 < n; ++w) {
    const uint64_t bits = allowed[w];
    if (bits == ~uint64_t{0}) continue;
    const size_t end = std::min(n, w * 64 + 64);
    for (size_t i = w * 64; i < end; ++i)
      if (!((bits >> (i - w * 64)) & 1)) logits[i] = -std::numeric_limits<float>::infinity();
  }
  for (size_t i = n; i < logits.size(); ++i)  // ids past the mask are not allowed either
    logits[i] = -std::numeric_limits<float>::infinity();
}

token_id sample_token(std::span<const float> logits, const sampling_params& params,
                      uint64_t position, const sample_history& history, token_logprobs* logprobs,
                      std::span<const uint64_t> allowed) {
  token_id chosen = 0;
  if (adjusts_logits(params) || !allowed.empty()) {
    thread_local std::vector<float> row;
    row.assign(logits.begin(), logits.end());
    adjust_logits(row, params, history);
    // The grammar's mask comes after bias and penalties, before the temperature and the
    // filters, so that it has the last word.
    apply_token_mask(row, allowed);
    chosen = sample_adjusted(row, params, position);
  } else {
    chosen = sample_adjusted(logits, params, position);
  }
  if (logprobs && params.top_logprobs >= 0)
    compute_logprobs(logits, chosen, params.top_logprobs, *logprobs);
  return chosen;
}

namespace {

/// Step 4: temperature, the filters and the draw over an already adjusted row.
token_id sample_adjusted(std::span<const float> logits, const sampling_params& params,
                         uint64_t position) {
  if (logits.empty()) return 0;
  if (!(params.temperature > 0)) return greedy_token(logits);
  thread_local std::vector<candidate> cands;
  cands.clear();
  cands.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    if (!std::isnan(logits[i])) cands.push_back({logits[i], static_cast<token_id>(i)});
  if (cands.empty()) return 0;

  // top-k first; after it, `cands` is sorted best first whenever a filter needs order.
  size_t keep = cands.size();
  if (params.top_k > 0 && params.top_k < keep) {
    keep = params.top_k;
    std::partial_sort(cands.begin(), cands.begin() + static_cast<ptrdiff_t>(keep), cands.end(),
                      before);
    cands.resize(keep);
  } else if (params.top_p < 1) {
    std::sort(cands.begin(), cands.end(), before);
  } else {
    // Only the maximum is needed for min_p and for a stable softmax.
    auto best = std::min_element(cands.begin(), cands.end(), before);
    std::iter_swap(cands.begin(), best);
  }

  // Probabilities at temperature, relative to the best candidate (which is first).
  const double inv_t = 1.0 / params.temperature;
  const double top = cands.front().logit;
  thread_local std::vector<double> probs;
  probs.resize(cands.size());
  double total = 0;
  for (size_t i = 0; i < cands.size(); ++i) {
    probs[i] = std::exp((cands[i].logit - top) * inv_t);
    total += probs[i];
  }

  size_t n = cands.size();
  if (params.top_p < 1) {
    // Smallest prefix (in probability order) whose mass reaches top_p.
    double mass = 0;
    size_t i = 0;
    while (i < n) {
      mass += probs[i] / total;
      ++i;
      if (mass >= params.top_p) break;
    }
    n = std::max<size_t>(i, 1);
  }
  if (params.min_p > 0) {
    // probs[0] is the largest (== 1 before normalisation).
    const double floor = params.min_p * probs[0];
    size_t w = 0;
    for (size_t i = 0; i < n; ++i)
      if (probs[i] >= floor) {
        probs[w] = probs[i];
        cands[w] = cands[i];
        ++w;
      }
    n = std::max<size_t>(w, 1);
  }
  double kept = 0;
  for (size_t i = 0; i < n; ++i)
    kept += probs[i];
  double u = uniform01(params.seed, position) * kept;
  for (size_t i = 0; i < n; ++i) {
    u -= probs[i];
    if (u < 0) return cands[i].id;
  }
  return cands[n - 1].id;
}

}  // namespace

}  // namespace tokenmill
