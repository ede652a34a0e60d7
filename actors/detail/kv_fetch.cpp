#include "actors/detail/kv_fetch.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "actors/decode/decode_policy.hpp"
#include "actors/prefix_reuse.hpp"
#include "actors/router/fetch_policy.hpp"
#include "common/clock.hpp"

namespace tokenmill {

std::string fetch_stats::summary() const {
  return fmt::format("fetched {} blocks ({} bytes) in {} fetches, {} missing, {} failed", blocks,
                     bytes, fetches, missing, failures);
}

void fetch_stats::report(kv_fetch_status& out) const {
  out.started = fetches;
  out.completed = completed;
  out.failed = failures;
  out.blocks = blocks;
  out.bytes = bytes;
  out.missing = missing;
  out.time_ns = time_ns;
}

namespace {
/// Adds the time of the fetch `f` describes, from fetch_started to now (0 when it was never
/// stamped), to `stats`.
void add_fetch_time(fetch_stats& stats, const prompt_fetch& f) {
  if (f.started_ns <= 0) return;
  stats.time_ns += static_cast<uint64_t>(std::max<int64_t>(0, now_ns() - f.started_ns));
}
}  // namespace

void fetch_started(fetch_stats& stats, prompt_fetch& f) {
  ++stats.fetches;
  f.started_ns = now_ns();
}

std::optional<kv_fetch_request> make_fetch_request(const kv_worker& w, request_id id,
                                                   std::span<const uint64_t> chain,
                                                   std::span<const block_id> blocks,
                                                   uint32_t prompt_len, uint32_t reused,
                                                   prompt_fetch& f) {
  f.asked = 0;
  if (!f.from) return std::nullopt;
  const auto bt = w.pool->layout().block_tokens;
  const uint32_t end =
      std::min({f.end, reusable_prefix_blocks(prompt_len, bt), static_cast<uint32_t>(chain.size()),
                static_cast<uint32_t>(blocks.size())});
  if (end <= reused) return std::nullopt;
  kv_fetch_request r;
  r.id = id;
  r.hashes.assign(chain.begin() + reused, chain.begin() + end);
  r.dst = w.info.pool;
  r.dst_blocks.assign(blocks.begin() + reused, blocks.begin() + end);
  f.asked = end - reused;
  return r;
}

result<uint32_t> take_fetch_reply(kv_worker& w, fetch_stats& stats, const kv_fetch_reply& rep,
                                  std::span<const token_id> tokens,
                                  std::span<const block_id> blocks, uint32_t reused,
                                  const prompt_fetch& f) {
  if (rep.error)
    return error_info{rep.error.code, fmt::format("{} said: {}", f.source, rep.error.message)};
  const auto asked = blocks.subspan(reused, f.asked);
  const auto& t = rep.transfer;
  auto n = fetched_prefix(asked, t.payload.dst_blocks, t.checksums.size(), f.source);
  if (!n) return n.error();
  if (*n > 0) {
    if (auto err = w.transport->deliver(t.payload, w.pool->storage(), w.pool->block_bytes()))
      return err;
    for (size_t i = 0; i < *n; ++i) {
      auto b = t.payload.dst_blocks[i];
      if (auto err = check_block_checksum(b, block_checksum(*w.pool, b), t.checksums[i]))
        return *err;
    }
    const auto bt = w.pool->layout().block_tokens;
    if (auto kv = w.check_kv(tokens, blocks, first_computed_token(reused, bt),
                             first_computed_token(reused + *n, bt));
        !kv)
      return kv.error();
  }
  ++stats.completed;
  add_fetch_time(stats, f);
  stats.blocks += *n;
  stats.bytes += uint64_t{*n} * w.pool->block_bytes();
  stats.missing += f.asked - *n;
  return *n;
}

void note_fetch_failed(const kv_worker& w, fetch_stats& stats, std::string_view what, request_id id,
                       const prompt_fetch& f, const std::string& why) {
  ++stats.failures;
  add_fetch_time(stats, f);
  spdlog::warn("{} {}: fetch of {} blocks of request {} from {} failed, computing them: {}", what,
               w.info.name, f.asked, id, f.source, why);
}

result<std::vector<block_id>> swap_fetched_blocks(kv_worker& w, std::vector<block_id>& blocks,
                                                  uint32_t reused, const prompt_fetch& f) {
  if (!w.transport->one_sided() || f.asked == 0) return std::vector<block_id>{};
  auto fresh = w.cache->allocate(f.asked);
  if (!fresh)
    return error_info{errc::unavailable,
                      fmt::format("the fetch from {} was given up and no free KV blocks can "
                                  "replace the {} it may still write",
                                  f.source, f.asked)};
  auto at = blocks.begin() + reused;
  std::vector<block_id> held(at, at + f.asked);
  std::copy(fresh->begin(), fresh->end(), at);
  return held;
}

bool fetch_source_lost(const membership& m, const caf::actor& from) {
  auto mem = std::find_if(m.members.begin(), m.members.end(),
                          [&](const member& x) { return x.handle == from; });
  return mem == m.members.end() || !mem->up;
}

}  // namespace tokenmill
