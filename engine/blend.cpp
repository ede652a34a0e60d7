#include "engine/blend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace tokenmill {
namespace {

error_info bad(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

/// The shared tail of the selections: the last position (its logits give the first token;
/// not counted against the budget) and the kept positions in order.
void finish_selection(std::span<const blend_segment> segments, uint32_t cached_prefix,
                      std::vector<uint8_t>& keep, blend_selection& sel) {
  const uint32_t n = segments.back().end;
  if (n > cached_prefix && !keep[n - 1]) {
    keep[n - 1] = 1;
    if (segments.back().reused) ++sel.recomputed_reused;
  }
  for (uint32_t p = cached_prefix; p < n; ++p)
    if (keep[p]) sel.positions.push_back(p);
}

uint32_t reused_past(std::span<const blend_segment> segments, uint32_t cached_prefix) {
  uint32_t n = 0;
  for (const auto& s : segments)
    if (s.reused && s.end > cached_prefix) n += s.end - std::max(s.begin, cached_prefix);
  return n;
}

}  // namespace

result<void> check_blend_segments(std::span<const blend_segment> segments, uint32_t prompt_tokens,
                                  uint32_t max_segments) {
  if (segments.empty()) return bad("blend: no segments (the prompt must be given as segments)");
  if (segments.size() > max_segments)
    return bad(
        fmt::format("blend: too many segments: {} (at most {})", segments.size(), max_segments));
  uint32_t expect = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto& s = segments[i];
    if (s.begin >= s.end)
      return bad(fmt::format("blend: segment {} [{}, {}) is empty", i, s.begin, s.end));
    if (s.begin < expect)
      return bad(fmt::format("blend: segment {} [{}, {}) overlaps segment {} [{}, {})", i, s.begin,
                             s.end, i - 1, segments[i - 1].begin, segments[i - 1].end));
    if (s.begin > expect)
      return bad(fmt::format("blend: segment {} starts at {}: positions [{}, {}) are in no segment",
                             i, s.begin, expect, s.begin));
    if (s.end > prompt_tokens)
      return bad(fmt::format("blend: segment {} [{}, {}) ends beyond the prompt ({} tokens)", i,
                             s.begin, s.end, prompt_tokens));
    expect = s.end;
  }
  if (expect != prompt_tokens)
    return bad(fmt::format("blend: segments end at {} but the prompt has {} tokens", expect,
                           prompt_tokens));
  return {};
}

result<void> check_recompute_ratio(float ratio) {
  if (!(ratio >= 0.0f && ratio <= 1.0f))
    return bad(fmt::format("blend: recompute_ratio {} is not in [0, 1]", ratio));
  return {};
}

uint32_t recompute_budget(uint32_t reused_tokens, float ratio) {
  if (!(ratio > 0.0f)) return 0;
  if (ratio >= 1.0f) return reused_tokens;
  double b = std::round(static_cast<double>(ratio) * reused_tokens);
  return static_cast<uint32_t>(std::clamp(b, 0.0, static_cast<double>(reused_tokens)));
}

bool selection_needs_deviation(std::span<const blend_segment> segments, uint32_t cached_prefix,
                               float ratio) {
  const uint32_t reused = reused_past(segments, cached_prefix);
  const uint32_t budget = recompute_budget(reused, ratio);
  return budget > 0 && budget < reused;
}

blend_selection select_recompute(std::span<const blend_segment> segments, uint32_t cached_prefix,
                                 std::span<const float> deviation, float ratio,
                                 uint32_t first_tokens) {
  blend_selection sel;
  if (segments.empty()) return sel;
  const uint32_t n = segments.back().end;
  std::vector<uint8_t> keep(n, 0);
  sel.reused_tokens = reused_past(segments, cached_prefix);
  uint32_t budget = recompute_budget(sel.reused_tokens, ratio);
  std::vector<uint32_t> candidates;  // reused positions past the prefix, not yet kept
  for (const auto& s : segments) {
    const uint32_t b = std::max(s.begin, cached_prefix);
    if (b >= s.end) continue;
    if (!s.reused) {
      std::fill(keep.begin() + b, keep.begin() + s.end, 1);
      continue;
    }
    // First tokens of the chunk (relative to its own start, even when the prefix cut it).
    for (uint32_t p = b; p < s.end; ++p) {
      if (p < s.begin + first_tokens && budget > 0) {
        keep[p] = 1;
        --budget;
        ++sel.recomputed_reused;
      } else {
        candidates.push_back(p);
      }
    }
  }
  if (budget > 0) {
    if (budget >= candidates.size()) {
      for (uint32_t p : candidates)
        keep[p] = 1;
      sel.recomputed_reused += static_cast<uint32_t>(candidates.size());
    } else {
      // NaN (a diverging model) ranks first: such a token surely needs recomputing.
      auto dev = [&](uint32_t p) {
        float d = p < deviation.size() ? deviation[p] : 0.0f;
        return std::isnan(d) ? std::numeric_limits<float>::infinity() : d;
      };
      std::partial_sort(candidates.begin(), candidates.begin() + budget, candidates.end(),
                        [&](uint32_t a, uint32_t b) {
                          float da = dev(a), db = dev(b);
                          return da != db ? da > db : a < b;
                        });
      for (uint32_t i = 0; i < budget; ++i)
        keep[candidates[i]] = 1;
      sel.recomputed_reused += budget;
    }
  }
  finish_selection(segments, cached_prefix, keep, sel);
  return sel;
}

std::string_view blend_policy_name(blend_policy p) {
  return p == blend_policy::leading ? "leading" : "deviation";
}

result<blend_policy> parse_blend_policy(std::string_view name) {
  if (name == "deviation") return blend_policy::deviation;
  if (name == "leading") return blend_policy::leading;
  return bad(fmt::format("blend: unknown policy '{}' (deviation or leading)", name));
}

blend_selection select_leading(std::span<const blend_segment> segments, uint32_t cached_prefix,
                               float ratio) {
  blend_selection sel;
  if (segments.empty()) return sel;
  std::vector<uint8_t> keep(segments.back().end, 0);
  sel.reused_tokens = reused_past(segments, cached_prefix);
  const uint32_t budget = recompute_budget(sel.reused_tokens, ratio);
  struct share {
    uint32_t begin, quota;
    uint64_t remainder;
  };
  std::vector<share> shares;  // reused segments past the prefix, in prompt order
  uint32_t given = 0;
  for (const auto& s : segments) {
    const uint32_t b = std::max(s.begin, cached_prefix);
    if (b >= s.end) continue;
    if (!s.reused) {
      std::fill(keep.begin() + b, keep.begin() + s.end, 1);
      continue;
    }
    const uint64_t exact = uint64_t{budget} * (s.end - b);  // / reused_tokens
    shares.push_back(
        {b, static_cast<uint32_t>(exact / sel.reused_tokens), exact % sel.reused_tokens});
    given += shares.back().quota;
  }
  // The quotas' floors sum to at most budget, short by fewer than shares.size().
  std::vector<size_t> by_remainder(shares.size());
  for (size_t i = 0; i < shares.size(); ++i)
    by_remainder[i] = i;
  std::stable_sort(by_remainder.begin(), by_remainder.end(),
                   [&](size_t a, size_t b) { return shares[a].remainder > shares[b].remainder; });
  for (size_t i = 0; given < budget && i < by_remainder.size(); ++i, ++given)
    ++shares[by_remainder[i]].quota;
  for (const auto& sh : shares) {
    std::fill(keep.begin() + sh.begin, keep.begin() + sh.begin + sh.quota, 1);
    sel.recomputed_reused += sh.quota;
  }
  finish_selection(segments, cached_prefix, keep, sel);
  return sel;
}

}  // namespace tokenmill
