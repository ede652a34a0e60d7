#include "actors/decode/migration_policy.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tokenmill {

std::optional<error_info> check_can_migrate(request_id id, bool known, bool decoding, bool moving,
                                            bool to_self) {
  if (!known)
    return error_info{errc::invalid_request,
                      fmt::format("request {} is not on this decode worker", id)};
  if (to_self)
    return error_info{errc::invalid_request,
                      fmt::format("request {} cannot move to the worker it is on", id)};
  if (moving)
    return error_info{errc::invalid_request, fmt::format("request {} is already moving", id)};
  if (!decoding)
    return error_info{errc::invalid_request,
                      fmt::format("request {} is not decoding yet (waiting for blocks, its "
                                  "prompt's KV or local prefill): only decoding sequences move",
                                  id)};
  return std::nullopt;
}

std::optional<error_info> check_migrate_offer(const migrate_offer_shape& s) {
  auto bad = [](std::string msg) { return error_info{errc::invalid_request, std::move(msg)}; };
  if (s.known) return bad("the target already holds a sequence with this id");
  if (uint64_t{s.prompt_len} + s.generated != s.tokens)
    return bad(fmt::format("offer has {} tokens for a prompt of {} and {} generated", s.tokens,
                           s.prompt_len, s.generated));
  if (s.prompt_len == 0 || s.generated == 0)
    return bad("offer has an empty prompt or no generated token");
  if (s.kv_tokens + 1 != s.tokens)
    return bad(fmt::format("offer carries the KV of {} positions for {} tokens (expected {})",
                           s.kv_tokens, s.tokens, s.tokens - 1));
  if (s.generated >= s.max_tokens)
    return bad(fmt::format("offer has generated {} of max_tokens {}: nothing is left to do",
                           s.generated, s.max_tokens));
  if (s.src_block_bytes != s.dst_block_bytes)
    return bad(fmt::format("KV block size differs: source {} bytes, target {} bytes",
                           s.src_block_bytes, s.dst_block_bytes));
  const auto need = s.need_blocks;
  if (need > s.pool_blocks)
    return error_info{errc::out_of_blocks,
                      fmt::format("sequence needs {} KV blocks (prompt {} + max_tokens {} "
                                  "tokens); the target's pool has {}",
                                  need, s.prompt_len, s.max_tokens, s.pool_blocks)};
  return std::nullopt;
}

uint32_t migration_kv_blocks(uint32_t kv_tokens, uint32_t block_tokens) {
  if (block_tokens == 0) return 0;
  return (kv_tokens + block_tokens - 1) / block_tokens;
}

uint32_t migration_reusable_blocks(uint32_t kv_tokens, uint32_t block_tokens) {
  if (block_tokens == 0) return 0;
  return kv_tokens / block_tokens;
}

std::optional<error_info> check_migrate_accept(uint32_t kv_blocks, uint32_t skip_blocks,
                                               size_t dst_blocks, uint64_t src_block_bytes,
                                               uint64_t dst_block_bytes, uint32_t dst_pool_blocks) {
  auto bad = [](std::string msg) { return error_info{errc::invalid_request, std::move(msg)}; };
  if (src_block_bytes != dst_block_bytes)
    return bad(
        fmt::format("target's KV blocks are {} bytes, ours {}", dst_block_bytes, src_block_bytes));
  if (skip_blocks > kv_blocks || skip_blocks + dst_blocks != kv_blocks)
    return bad(fmt::format("target reuses {} and asks for {} of {} KV blocks", skip_blocks,
                           dst_blocks, kv_blocks));
  if (dst_blocks > dst_pool_blocks)
    return bad(
        fmt::format("target asks for {} blocks of a {}-block pool", dst_blocks, dst_pool_blocks));
  return std::nullopt;
}

std::optional<error_info> check_migrate_commit(std::span<const block_id> expected,
                                               std::span<const block_id> dst_blocks,
                                               size_t checksums) {
  if (dst_blocks.size() != expected.size() ||
      !std::equal(expected.begin(), expected.end(), dst_blocks.begin()))
    return error_info{errc::kv_corrupt,
                      fmt::format("migration writes {} blocks, not the {} reserved for it",
                                  dst_blocks.size(), expected.size())};
  if (checksums != dst_blocks.size())
    return error_info{errc::kv_corrupt, fmt::format("migration carries {} checksums for {} blocks",
                                                    checksums, dst_blocks.size())};
  return std::nullopt;
}

migration_fallback after_failed_move(bool cancelled, bool keep_on_failure, bool engine_ok) {
  if (cancelled) return migration_fallback::cancel;
  if (!keep_on_failure || !engine_ok) return migration_fallback::end_attempt;
  return migration_fallback::continue_here;
}

std::optional<size_t> pick_migration_target(std::span<const migration_candidate> candidates,
                                            worker_id self) {
  std::optional<size_t> best;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const auto& c = candidates[i];
    if (!c.up || c.draining || c.id == self) continue;
    if (!best) {
      best = i;
      continue;
    }
    const auto& b = candidates[*best];
    if (c.load < b.load || (c.load == b.load && c.id < b.id)) best = i;
  }
  return best;
}

std::vector<request_id> pick_rebalance(std::vector<rebalance_candidate> candidates,
                                       uint32_t count) {
  std::sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
    return a.remaining != b.remaining ? a.remaining > b.remaining : a.id < b.id;
  });
  std::vector<request_id> picked;
  for (const auto& c : candidates) {
    if (picked.size() >= count || c.remaining == 0) break;
    picked.push_back(c.id);
  }
  return picked;
}

}  // namespace tokenmill
