#pragma once
// A profile measured from an analytic engine (the sim engine's cost model), for the profile
// and plan tests: prefill base + per-token, decode base + per-sequence + per-context-token.
#include <vector>

#include "cluster/engine_profile.hpp"

namespace tokenmill::testing {

struct analytic_engine {
  double prefill_base_s = 0.005;
  double prefill_per_token_s = 50e-6;
  double decode_base_s = 0.010;
  double decode_per_seq_s = 100e-6;
  double decode_per_ctx_s = 5e-9;  ///< per context token summed over the batch
};

inline engine_profile analytic_profile(
    const analytic_engine& a = {}, std::vector<uint32_t> chunks = {64, 128, 256, 512, 1024, 2048},
    std::vector<uint32_t> prompts = {512, 2048}, std::vector<uint32_t> batches = {1, 8, 32, 128},
    std::vector<uint32_t> contexts = {512, 2048}) {
  engine_profile p;
  p.engine = "sim";
  p.model_name = "sim";
  p.threads = 1;
  p.max_context = 8192;
  p.has_sim = true;
  p.sim.max_context = 8192;
  p.layout = kv_layout{2, 2, 64, 16, 2};
  p.kv_bytes_per_token = p.layout.block_bytes() / p.layout.block_tokens;
  p.kv_max_blocks = 1 << 20;
  p.kv_memory_bytes = uint64_t{p.kv_max_blocks} * p.layout.block_bytes();
  p.kv_memory_source = "test";
  p.cpu = "test cpu";
  for (uint32_t c : chunks) {
    p.prefill.push_back({c, c, 1, a.prefill_base_s + a.prefill_per_token_s * c});
    for (uint32_t l : prompts)
      if (l > c) {
        uint32_t calls = (l + c - 1) / c;
        p.prefill.push_back({c, l, calls, calls * a.prefill_base_s + a.prefill_per_token_s * l});
      }
  }
  for (uint32_t ctx : contexts)
    for (uint32_t b : batches)
      p.decode.push_back(
          {b, ctx,
           a.decode_base_s + a.decode_per_seq_s * b + a.decode_per_ctx_s * double(b) * ctx});
  auto sat = find_prefill_saturation(p.prefill, p.saturation_fraction);
  p.saturation_chunk = sat->chunk_tokens;
  p.peak_prefill_tokens_per_s = sat->peak_tokens_per_s;
  return p;
}

}  // namespace tokenmill::testing
