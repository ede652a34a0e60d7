#pragma once
/// Small random in-memory Llama-shaped models for the cpu engine's tests.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "engine/cpu/kernels.hpp"
#include "engine/model.hpp"
#include "engine/tokenizer.hpp"

namespace tokenmill::test {

struct model_options {
  dtype type = dtype::f32;
  rope_style rope = rope_style::adjacent;
  bool qkv_bias = false;
  rope_scaling scaling;
  uint32_t layers = 2;
};

/// A random Llama-shaped model: dim 64, `o.layers` layers (2 by default), 4 heads over 2 KV heads
/// (GQA), head_dim 16, ffn 96, vocab 300. Weights live in the model's own storage.
inline std::shared_ptr<const loaded_model> make_random_model(const model_options& o,
                                                             uint32_t seed = 1) {
  auto m = std::make_shared<loaded_model>();
  llama_config& c = m->config;
  c.name = "random";
  c.dim = 64;
  c.layers = o.layers;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 16;
  c.ffn = 96;
  c.vocab = 300;
  c.max_context = 512;
  c.rope = o.rope;
  c.scaling = o.scaling;
  c.qkv_bias = o.qkv_bias;
  m->tok = std::make_shared<byte_word_tokenizer>(c.vocab);
  std::mt19937 rng(seed);
  auto tensor = [&](const char* name, dtype t, uint64_t rows, uint64_t cols, float center,
                    float spread) {
    std::uniform_real_distribution<float> d(center - spread, center + spread);
    auto bytes = std::make_shared<std::vector<std::byte>>(rows * row_bytes(t, cols));
    std::vector<float> f(cols);
    for (uint64_t r = 0; r < rows; ++r) {
      for (auto& x : f)
        x = d(rng);
      std::byte* dst = bytes->data() + r * row_bytes(t, cols);
      for (uint64_t k = 0; k < cols; ++k) {
        if (t == dtype::f32) std::memcpy(dst + 4 * k, &f[k], 4);
        if (t == dtype::f16 || t == dtype::bf16) {
          uint16_t h = t == dtype::f16 ? cpu::f32_to_f16(f[k]) : cpu::f32_to_bf16(f[k]);
          std::memcpy(dst + 2 * k, &h, 2);
        }
      }
      if (t == dtype::q8_0) cpu::quantize_row_q8_0(f.data(), dst, cols);
    }
    m->storage.push_back(bytes);
    return tensor_view{name, t, rows, cols, bytes->data()};
  };
  const float lin = 1.0f / std::sqrt(64.0f) * 1.7f;  // keeps activations O(1)
  auto& w = m->weights;
  w.tok_embd = tensor("tok_embd", o.type, c.vocab, c.dim, 0, 1);
  for (uint32_t l = 0; l < c.layers; ++l) {
    layer_weights lw;
    lw.attn_norm = tensor("attn_norm", dtype::f32, 1, c.dim, 1, 0.2f);
    lw.wq = tensor("wq", o.type, 64, c.dim, 0, 3 * lin);
    lw.wk = tensor("wk", o.type, 32, c.dim, 0, 3 * lin);
    lw.wv = tensor("wv", o.type, 32, c.dim, 0, lin);
    lw.wo = tensor("wo", o.type, c.dim, 64, 0, lin);
    if (o.qkv_bias) {
      lw.bq = tensor("bq", dtype::f32, 1, 64, 0, 0.5f);
      lw.bk = tensor("bk", dtype::f32, 1, 32, 0, 0.5f);
      lw.bv = tensor("bv", dtype::f32, 1, 32, 0, 0.5f);
    }
    lw.ffn_norm = tensor("ffn_norm", dtype::f32, 1, c.dim, 1, 0.2f);
    lw.w_gate = tensor("w_gate", o.type, c.ffn, c.dim, 0, lin);
    lw.w_up = tensor("w_up", o.type, c.ffn, c.dim, 0, lin);
    lw.w_down = tensor("w_down", o.type, c.dim, c.ffn, 0, lin);
    w.layers.push_back(lw);
  }
  w.out_norm = tensor("out_norm", dtype::f32, 1, c.dim, 1, 0.2f);
  w.output = tensor("output", o.type, c.vocab, c.dim, 0, 2 * lin);
  return m;
}

inline std::vector<token_id> random_tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<token_id> d(0, 299);
  std::vector<token_id> t(n);
  for (auto& x : t)
    x = d(rng);
  return t;
}

inline float max_abs_diff(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace tokenmill::test
