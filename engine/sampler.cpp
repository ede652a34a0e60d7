#include "engine/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
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

token_id sample_token(std::span<const float> logits, const sampling_params& params,
                      uint64_t position) {
  if (logits.empty()) return 0;
  if (!(params.temperature > 0)) {
    size_t best = 0;
    for (size_t i = 1; i < logits.size(); ++i)
      if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;
    return static_cast<token_id>(best);
  }
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

token_id sample_row(std::span<const float> logits, std::span<const uint64_t> allowed,
                    const sampling_params& params, uint64_t position) {
  if (allowed.empty()) return sample_token(logits, params, position);
  thread_local std::vector<float> masked;
  masked.assign(logits.begin(), logits.end());
  apply_token_mask(masked, allowed);
  return sample_token(masked, params, position);
}

}  // namespace tokenmill
