#include "engine/sim_engine.hpp"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "common/clock.hpp"
#include "common/wake_latency.hpp"
#include "engine/detail/splitmix.hpp"
#include "engine/sampler.hpp"

namespace tokenmill {
namespace {

/// Seed of the contents of one (position, token, layer, K|V, head) vector.
uint64_t vector_seed(uint64_t seed, uint32_t pos, token_id tok, uint32_t layer, uint32_t kv,
                     uint32_t head) {
  uint64_t words[4] = {seed, (uint64_t{pos} << 32) | static_cast<uint32_t>(tok),
                       (uint64_t{layer} << 32) | kv, head};
  return XXH3_64bits(words, sizeof(words));
}

void fill_vector(std::byte* dst, size_t bytes, uint64_t state) {
  for (size_t i = 0; i < bytes; i += 8) {
    uint64_t v = detail::splitmix64(state);
    std::memcpy(dst + i, &v, std::min<size_t>(8, bytes - i));
  }
}

}  // namespace

sim_engine::sim_engine(sim_config cfg) : cfg_(cfg) {
  if (auto r = cfg_.layout.validate(); !r) throw std::invalid_argument(r.error().message);
  if (cfg_.vocab_size <= static_cast<uint32_t>(first_word_id))
    throw std::invalid_argument(
        fmt::format("sim vocab_size must exceed {}, got {}", first_word_id, cfg_.vocab_size));
  // Written so that NaN fails too; NaN or inf would make the cost casts undefined.
  if (!(cfg_.slowdown > 0 && std::isfinite(cfg_.slowdown)))
    throw std::invalid_argument("sim slowdown must be positive and finite");
  info_.name = "sim";
  info_.vocab_size = cfg_.vocab_size;
  info_.max_context = cfg_.max_context;
  info_.layout = cfg_.layout;
}

uint64_t sim_engine::prefill_cost_ns(uint64_t tokens) const {
  return static_cast<uint64_t>(
      static_cast<double>(cfg_.prefill_base_ns + cfg_.prefill_ns_per_token * tokens) *
      cfg_.slowdown);
}

uint64_t sim_engine::decode_cost_ns(uint64_t seqs, uint64_t ctx_tokens) const {
  return static_cast<uint64_t>(static_cast<double>(cfg_.decode_base_ns +
                                                   cfg_.decode_per_seq_ns * seqs +
                                                   cfg_.decode_per_ctx_token_ns * ctx_tokens) *
                               cfg_.slowdown);
}

token_id sim_engine::next_token(std::span<const token_id> context, const sampling_params& s,
                                std::span<const uint64_t> allowed) const {
  size_t window = std::min<size_t>(context.size(), 8);
  uint64_t seed = cfg_.seed ^ (uint64_t{context.size()} * 0x100000001b3ULL);
  if (s.temperature > 0) seed ^= XXH3_64bits(&s.seed, sizeof(s.seed));
  uint64_t h = XXH3_64bits_withSeed(context.data() + (context.size() - window),
                                    window * sizeof(token_id), seed);
  uint32_t span = cfg_.vocab_size - static_cast<uint32_t>(first_word_id);
  token_id pick = first_word_id + static_cast<token_id>(h % span);
  if (allowed.empty()) return pick;
  auto ok = [&](uint32_t id) {
    return id / 64 < allowed.size() && ((allowed[id / 64] >> (id % 64)) & 1);
  };
  for (uint32_t k = 0; k < cfg_.vocab_size; ++k) {
    uint32_t id = (static_cast<uint32_t>(pick) + k) % cfg_.vocab_size;
    if (ok(id)) return static_cast<token_id>(id);
  }
  return pick;  // nothing allowed: the worker's grammar state reports it
}

std::vector<float> sim_engine::logits(std::span<const token_id> context) const {
  const token_id favourite = next_token(context, sampling_params{});
  uint64_t state = XXH3_64bits_withSeed(context.data(), context.size() * sizeof(token_id),
                                        cfg_.seed ^ 0x6c6f67697473ULL);
  std::vector<float> row(cfg_.vocab_size, -30.0f);
  for (uint32_t i = static_cast<uint32_t>(first_word_id); i < cfg_.vocab_size; ++i)
    row[i] = static_cast<float>(detail::splitmix64(state) >> 40) * 0x1.0p-24f * 4.0f - 2.0f;
  row[favourite] += 6.0f;
  return row;
}

token_id sim_engine::sample(std::span<const token_id> context, size_t prompt_len,
                            const sampling_params& s, token_logprobs* lp,
                            std::span<const uint64_t> allowed) const {
  if (!needs_host_row(s)) return next_token(context, s, allowed);
  auto row = logits(context);
  return sample_token(row, s, context.size(), make_history(context, prompt_len, s), lp, allowed);
}

namespace {

/// Success when `blocks` holds the block of every position in [begin, end), else
/// errc::invalid_request naming the first position past the table.
result<void> check_table(const kv_layout& L, std::span<const block_id> blocks, uint32_t begin,
                         uint32_t end) {
  if (end <= begin || L.blocks_for(end) <= blocks.size()) return {};
  uint32_t pos = std::max<uint32_t>(begin, static_cast<uint32_t>(blocks.size()) * L.block_tokens);
  return error_info{
      errc::invalid_request,
      fmt::format("position {} is past the block table ({} blocks)", pos, blocks.size())};
}

}  // namespace

void sim_engine::write_position(block_pool& pool, std::span<const block_id> blocks, uint32_t pos,
                                token_id tok) const {
  const auto& L = cfg_.layout;
  uint32_t bi = pos / L.block_tokens;
  std::byte* base = pool.block(blocks[bi]);
  uint32_t slot = pos % L.block_tokens;
  size_t vec = size_t{L.head_dim} * L.dtype_bytes;
  for (uint32_t l = 0; l < L.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t h = 0; h < L.kv_heads; ++h)
        fill_vector(base + L.offset(l, kv, h, slot), vec,
                    vector_seed(cfg_.seed, pos, tok, l, kv, h));
}

result<std::vector<token_id>> sim_engine::prefill(block_pool& pool,
                                                  std::span<const prefill_chunk> batch) {
  // Nothing here throws but an allocation; no exception leaves the engine.
  return catch_into_result(errc::internal, [&]() -> result<std::vector<token_id>> {
    for (const auto& c : batch)
      if (auto r = check_table(cfg_.layout, c.blocks, c.begin, c.end); !r) return r.error();
    int64_t start = now_ns();
    uint64_t tokens = 0;
    std::vector<token_id> out;
    out.reserve(batch.size());
    for (const auto& c : batch) {
      tokens += c.end - c.begin;
      for (uint32_t p = c.begin; p < c.end; ++p)
        write_position(pool, c.blocks, p, c.tokens[p]);
      out.push_back(
          sample(c.tokens.subspan(0, c.end), c.tokens.size(), c.sampling, c.logprobs, c.allowed));
    }
    wait_until_ns(start + static_cast<int64_t>(prefill_cost_ns(tokens)));
    return out;
  });
}

result<std::vector<token_id>> sim_engine::decode(block_pool& pool,
                                                 std::span<const decode_seq> batch) {
  // Nothing here throws but an allocation; no exception leaves the engine.
  return catch_into_result(errc::internal, [&]() -> result<std::vector<token_id>> {
    for (const auto& s : batch) {
      if (s.tokens.empty())
        return error_info{errc::invalid_request, "sim engine: a decode sequence has no tokens"};
      auto pos = static_cast<uint32_t>(s.tokens.size() - 1);
      if (auto r = check_table(cfg_.layout, s.blocks, pos, pos + 1); !r) return r.error();
    }
    int64_t start = now_ns();
    uint64_t ctx = 0;
    std::vector<token_id> out;
    out.reserve(batch.size());
    for (const auto& s : batch) {
      auto pos = static_cast<uint32_t>(s.tokens.size() - 1);
      ctx += s.tokens.size();
      write_position(pool, s.blocks, pos, s.tokens[pos]);
      out.push_back(sample(s.tokens, s.prompt_len, s.sampling, s.logprobs, s.allowed));
    }
    wait_until_ns(start + static_cast<int64_t>(decode_cost_ns(batch.size(), ctx)));
    return out;
  });
}

result<void> sim_engine::check_kv(const block_pool& pool, std::span<const token_id> tokens,
                                  std::span<const block_id> blocks, uint32_t begin,
                                  uint32_t end) const {
  const auto& L = cfg_.layout;
  size_t vec = size_t{L.head_dim} * L.dtype_bytes;
  std::vector<std::byte> expect(vec);
  auto corrupt = [](std::string what) { return error_info{errc::kv_corrupt, std::move(what)}; };
  if (end > tokens.size())
    return corrupt(
        fmt::format("positions up to {} checked but only {} tokens given", end, tokens.size()));
  for (uint32_t pos = begin; pos < end; ++pos) {
    uint32_t bi = pos / L.block_tokens;
    if (bi >= blocks.size())
      return corrupt(
          fmt::format("position {} is past the block table ({} blocks)", pos, blocks.size()));
    const std::byte* base = pool.block(blocks[bi]);
    uint32_t slot = pos % L.block_tokens;
    for (uint32_t l = 0; l < L.layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv)
        for (uint32_t h = 0; h < L.kv_heads; ++h) {
          fill_vector(expect.data(), vec, vector_seed(cfg_.seed, pos, tokens[pos], l, kv, h));
          if (std::memcmp(expect.data(), base + L.offset(l, kv, h, slot), vec) != 0)
            return corrupt(fmt::format(
                "KV block {} (table index {}) holds wrong contents for position {} (layer {}, "
                "{}, head {})",
                blocks[bi], bi, pos, l, kv == 0 ? "K" : "V", h));
        }
  }
  return {};
}

}  // namespace tokenmill
