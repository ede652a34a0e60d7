#include "actors/router/fetch_policy.hpp"

#include <algorithm>
#include <unordered_set>

#include <fmt/format.h>

#include "actors/prefix_reuse.hpp"

namespace tokenmill {

fetch_plan plan_fetch(const route_candidate& serving, std::span<const route_candidate> sources,
                      uint32_t prompt_tokens, uint32_t block_tokens, const cost_model& model,
                      const fetch_settings& settings) {
  fetch_plan best;
  if (!settings.enabled || block_tokens == 0 || model.kv_bytes_per_block == 0 ||
      model.kv_bytes_per_s <= 0)
    return best;
  static const prefill_speed fallback{};
  const auto& speed = serving.speed ? *serving.speed : fallback;
  const uint32_t reusable = reusable_prefix_blocks(prompt_tokens, block_tokens);
  const uint32_t own = std::min(serving.overlap_blocks, reusable);
  const uint32_t min_blocks = std::max<uint32_t>(settings.min_blocks, 1);
  const auto& w = model.weights;
  const double block_s = static_cast<double>(model.kv_bytes_per_block) / model.kv_bytes_per_s;
  for (size_t i = 0; i < sources.size(); ++i) {
    const auto& x = sources[i];
    if (x.id == serving.id || x.draining) continue;
    const uint32_t end = std::min(x.overlap_blocks, reusable);
    if (end <= own || end - own < min_blocks) continue;
    fetch_plan p;
    p.source = i;
    p.first_block = own;
    p.end_block = end;
    p.saved_s = uncached_prefill_seconds(speed, prompt_tokens, own * block_tokens) -
                uncached_prefill_seconds(speed, prompt_tokens, end * block_tokens);
    // The source pins blocks [0, end) to find the run; those only in its second tier are
    // copied back into its pool first (acquire_prefix onboards them).
    p.transfer_s = settings.overhead_s + static_cast<double>(end - own) * block_s +
                   onboard_seconds(x, end, model);
    p.gain_s = w.prefill * p.saved_s - w.transfer * p.transfer_s;
    if (p.gain_s <= 0) continue;
    const bool wins = !best.source || p.gain_s > best.gain_s ||
                      (p.gain_s == best.gain_s &&
                       (p.end_block > best.end_block ||
                        (p.end_block == best.end_block && x.id < sources[*best.source].id)));
    if (wins) best = p;
  }
  return best;
}

result<uint32_t> fetched_prefix(std::span<const block_id> asked, std::span<const block_id> written,
                                size_t checksums, const std::string& source) {
  if (checksums != written.size())
    return error_info{errc::invalid_request,
                      fmt::format("fetch reply from {}: {} blocks written but {} checksums", source,
                                  written.size(), checksums)};
  if (written.size() > asked.size())
    return error_info{errc::invalid_request,
                      fmt::format("fetch reply from {}: {} blocks written, only {} asked for",
                                  source, written.size(), asked.size())};
  for (size_t i = 0; i < written.size(); ++i) {
    if (written[i] == asked[i]) continue;
    const bool known = std::find(asked.begin(), asked.end(), written[i]) != asked.end();
    return error_info{
        errc::invalid_request,
        known ? fmt::format("fetch reply from {}: block {} written at position {}, expected "
                            "block {} (not the leading run asked for)",
                            source, written[i], i, asked[i])
              : fmt::format("fetch reply from {}: block {} at position {} was not asked for",
                            source, written[i], i)};
  }
  return static_cast<uint32_t>(written.size());
}

}  // namespace tokenmill
