#pragma once
/// The `sim` engine: a calibrated timing model that computes nothing but behaves like a
/// model everywhere the runtime can see. It takes the modelled time per call, writes
/// deterministic position- and token-dependent contents into the KV blocks, checks them
/// on request, and produces a deterministic token sequence from the prompt.
#include <cstdint>

#include "engine/engine.hpp"

namespace tokenmill {

struct sim_config {
  uint64_t prefill_ns_per_token = 200'000;  ///< per prompt token in a batch
  uint64_t prefill_base_ns = 0;             ///< per prefill call
  uint64_t decode_base_ns = 10'000'000;     ///< per decode step
  uint64_t decode_per_seq_ns = 0;           ///< per sequence in the step
  uint64_t decode_per_ctx_token_ns = 0;     ///< per context token summed over the batch
  double slowdown = 1.0;                    ///< multiplies every modelled time
  uint32_t vocab_size = 32000;
  uint32_t max_context = 4096;
  uint64_t seed = 0x7e57'0001;
  kv_layout layout;
};

class sim_engine final : public engine {
 public:
  explicit sim_engine(sim_config cfg);
  const model_info& info() const override { return info_; }
  /// Writes the batch's KV and sleeps the modelled time. A block table that does not
  /// cover a position is errc::invalid_request, found before anything is written.
  result<std::vector<token_id>> prefill(block_pool& pool,
                                        std::span<const prefill_chunk> batch) override;
  result<std::vector<token_id>> decode(block_pool& pool,
                                       std::span<const decode_seq> batch) override;
  /// Recomputes the contents prefill/decode write; a mismatch is errc::kv_corrupt.
  result<void> check_kv(const block_pool& pool, std::span<const token_id> tokens,
                        std::span<const block_id> blocks, uint32_t begin,
                        uint32_t end) const override;

  /// Modelled duration of a prefill call over `tokens` prompt tokens (ns).
  uint64_t prefill_cost_ns(uint64_t tokens) const;
  /// Modelled duration of a decode step with `seqs` sequences and `ctx_tokens` context.
  uint64_t decode_cost_ns(uint64_t seqs, uint64_t ctx_tokens) const;
  /// The token the model produces after `context` (deterministic).
  /// With `allowed` (constrained decoding) the pick moves on, cyclically, to the first
  /// allowed id at or after it.
  token_id next_token(std::span<const token_id> context, const sampling_params& s,
                      std::span<const uint64_t> allowed = {}) const;
  /// The sim's logits after `context`, for sampling that needs a row (penalties, bias,
  /// logprobs): deterministic values in [-2, 2] over the words, -30 for specials and bytes,
  /// and +6 on next_token's greedy choice, so that greedy decoding picks the same token
  /// with or without a row.
  std::vector<float> logits(std::span<const token_id> context) const;
  /// The next token after `context` (prompt: its first `prompt_len` tokens): next_token, or
  /// when `s` needs a row the real sampler over logits() (masked by `allowed`), writing
  /// `lp` (may be null).
  token_id sample(std::span<const token_id> context, size_t prompt_len, const sampling_params& s,
                  token_logprobs* lp, std::span<const uint64_t> allowed = {}) const;
  const sim_config& config() const { return cfg_; }

  /// First id the sim ever generates; lower ids are specials and bytes.
  static constexpr token_id first_word_id = 259;

 private:
  void write_position(block_pool& pool, std::span<const block_id> blocks, uint32_t pos,
                      token_id tok) const;
  sim_config cfg_;
  model_info info_;
};

}  // namespace tokenmill
