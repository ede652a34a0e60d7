// Deterministic random-weight models: presets, weight generation in Hugging Face convention
// and the two writers (GGUF file, HF directory). The vocabulary is in make_model_vocab.cpp.
#include "engine/make_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/cpu/kernels.hpp"
#include "engine/detail/splitmix.hpp"
#include "engine/gguf.hpp"
#include "engine/safetensors.hpp"

namespace tokenmill {
namespace {

namespace fs = std::filesystem;
using detail::splitmix64;

llama_config base_config(std::string name, uint32_t dim, uint32_t layers, uint32_t heads,
                         uint32_t kv_heads, uint32_t ffn, uint32_t vocab, uint32_t max_context) {
  llama_config c;
  c.arch = "llama";
  c.name = std::move(name);
  c.dim = dim;
  c.layers = layers;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.head_dim = dim / heads;
  c.ffn = ffn;
  c.vocab = vocab;
  c.max_context = max_context;
  c.rope_theta = 10000;
  c.rope = rope_style::halves;
  c.rms_eps = 1e-5f;
  c.bos = 1;
  c.eos = 2;
  c.add_bos = true;
  return c;
}

std::vector<model_preset> build_presets() {
  std::vector<model_preset> p;
  p.push_back({"tiny", "fast tests: dim 64, 2 layers, GQA 4/2",
               base_config("tokenmill-tiny", 64, 2, 4, 2, 192, 512, 2048)});
  {
    auto c = base_config("tokenmill-llama3-tiny", 64, 2, 4, 2, 192, 512, 4096);
    c.rope_theta = 500000;
    c.scaling.type = rope_scaling::kind::llama3;
    c.scaling.factor = 4;
    c.scaling.low_freq_factor = 1;
    c.scaling.high_freq_factor = 4;
    c.scaling.original_max_context = 1024;
    p.push_back({"llama3-tiny", "tiny with Llama 3.x RoPE frequency scaling", c});
  }
  {
    auto c = base_config("tokenmill-qwen2-tiny", 64, 2, 4, 2, 192, 512, 2048);
    c.arch = "qwen2";
    c.qkv_bias = true;
    c.rope_theta = 1000000;
    c.rms_eps = 1e-6f;
    p.push_back({"qwen2-tiny", "tiny with Qwen2's Q/K/V biases and half-split RoPE", c});
  }
  {
    // Two layers are the fewest an induction circuit needs (a previous-token head, then a
    // head matching on it); head_dim 64 and a Llama 3 RoPE base leave enough slowly
    // rotating pairs to match content over a few hundred positions.
    auto c = base_config("tokenmill-rag-tiny", 128, 2, 2, 1, 384, 2048, 2048);
    c.rope_theta = 500000;
    p.push_back({"rag-tiny",
                 "dim 128, 2 layers, GQA 2/1 (head_dim 64), vocab 2048, RoPE base 500000: the "
                 "shape scripts/train-blend-model.py trains for bench-blend",
                 c});
  }
  p.push_back({"small", "dim 256, 4 layers, GQA 8/4",
               base_config("tokenmill-small", 256, 4, 8, 4, 768, 4096, 2048)});
  p.push_back({"125m", "benchmark preset: dim 768, 12 layers, GQA 12/4, vocab 32000",
               base_config("tokenmill-125m", 768, 12, 12, 4, 2048, 32000, 2048)});
  p.push_back({"350m", "dim 1024, 24 layers, GQA 16/8, vocab 32000",
               base_config("tokenmill-350m", 1024, 24, 16, 8, 2816, 32000, 2048)});
  p.push_back({"1b", "TinyLlama-1.1B shape: dim 2048, 22 layers, GQA 32/4, vocab 32000",
               base_config("tokenmill-1b", 2048, 22, 32, 4, 5632, 32000, 2048)});
  {
    // The GPU benchmark's model: Llama-3.2-1B's shapes and RoPE (the real one ties its output
    // head to the embedding; here it is separate, which changes the file, not the bytes a
    // decode step reads). Context capped at 8192 so benchmark pools stay small.
    auto c = base_config("tokenmill-llama3.2-1b", 2048, 16, 32, 8, 8192, 128256, 8192);
    c.rope_theta = 500000;
    c.scaling.type = rope_scaling::kind::llama3;
    c.scaling.factor = 32;
    c.scaling.low_freq_factor = 1;
    c.scaling.high_freq_factor = 4;
    c.scaling.original_max_context = 8192;
    c.rms_eps = 1e-5f;
    p.push_back({"llama3.2-1b",
                 "Llama-3.2-1B shape: dim 2048, 16 layers, GQA 32/8, "
                 "FFN 8192, vocab 128256 (GPU benchmarks)",
                 c});
  }
  return p;
}

// ---------------------------------------------------------------------------------------
// Deterministic numbers.

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

/// `count` values uniform in [center - half_width, center + half_width), a function of the
/// seed and the tensor's (Hugging Face) name only, so the order of generation is free.
std::vector<float> uniform_values(uint64_t seed, std::string_view name, size_t count, float center,
                                  float half_width) {
  uint64_t state = seed ^ fnv1a(name);
  splitmix64(state);
  std::vector<float> v(count);
  for (auto& x : v) {
    // 24 random bits -> [0, 1).
    float u = static_cast<float>(splitmix64(state) >> 40) * (1.0f / 16777216.0f);
    x = center + half_width * (2 * u - 1);
  }
  return v;
}

// ---------------------------------------------------------------------------------------
// Element conversion (the CPU kernels' round-to-nearest-even conversions).

/// Rows of `cols` values -> `t`, row by row (the block formats quantize each row with the
/// format's rounding rule, cpu::quantize_row).
std::vector<std::byte> encode_rows(const std::vector<float>& v, dtype t, size_t cols) {
  const size_t rows = v.size() / cols, rb = row_bytes(t, cols);
  std::vector<std::byte> out(rows * rb);
  for (size_t r = 0; r < rows; ++r)
    cpu::quantize_row(t, v.data() + r * cols, out.data() + r * rb, cols);
  return out;
}

std::vector<std::byte> encode(const std::vector<float>& v, dtype t) {
  std::vector<std::byte> out(v.size() * (t == dtype::f32 ? 4 : 2));
  if (t == dtype::f32) {
    std::memcpy(out.data(), v.data(), out.size());
  } else {
    std::vector<uint16_t> h(v.size());
    if (t == dtype::f16) {
      cpu::f32_to_f16_row(v.data(), h.data(), v.size());
    } else {
      for (size_t i = 0; i < v.size(); ++i)
        h[i] = cpu::f32_to_bf16(v[i]);
    }
    std::memcpy(out.data(), h.data(), out.size());  // little-endian host
  }
  return out;
}

/// Hugging Face rotates dimension i with i + d/2 inside each head; GGUF `llama` rotates
/// (2i, 2i+1). llama.cpp's converter therefore reorders the rows of Q and K (and their
/// biases) per head: new row 2i + j comes from old row j * d/2 + i (j = 0, 1).
std::vector<float> permute_for_adjacent(const std::vector<float>& w, uint32_t heads,
                                        uint32_t head_dim, size_t cols) {
  std::vector<float> out(w.size());
  uint32_t half = head_dim / 2;
  for (uint32_t h = 0; h < heads; ++h)
    for (uint32_t i = 0; i < half; ++i)
      for (uint32_t j = 0; j < 2; ++j) {
        size_t dst = size_t{h} * head_dim + 2 * i + j;
        size_t src = size_t{h} * head_dim + j * half + i;
        std::memcpy(out.data() + dst * cols, w.data() + src * cols, cols * sizeof(float));
      }
  return out;
}

/// llama.cpp's `rope_freqs.weight` for Llama 3.x scaling: per frequency, the divisor of
/// theta^(-2i/d) that Hugging Face's "llama3" rope_type applies.
std::vector<float> llama3_rope_divisors(const llama_config& c) {
  const auto& s = c.scaling;
  const double pi = 3.14159265358979323846;
  double low_wavelen = s.original_max_context / s.low_freq_factor;
  double high_wavelen = s.original_max_context / s.high_freq_factor;
  std::vector<float> out;
  for (uint32_t i = 0; i < c.head_dim / 2; ++i) {
    double freq = std::pow(static_cast<double>(c.rope_theta), -2.0 * i / c.head_dim);
    double wavelen = 2 * pi / freq;
    double div = 1;
    if (wavelen > low_wavelen) {
      div = s.factor;
    } else if (wavelen >= high_wavelen) {
      double smooth = (s.original_max_context / wavelen - s.low_freq_factor) /
                      (s.high_freq_factor - s.low_freq_factor);
      div = 1 / ((1 - smooth) / s.factor + smooth);
    }
    out.push_back(static_cast<float>(div));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Writers.

std::string hf_dtype_name(dtype t) {
  switch (t) {
    case dtype::f32:
      return "float32";
    case dtype::f16:
      return "float16";
    case dtype::bf16:
      return "bfloat16";
    default:
      return "unknown";
  }
}

/// One tensor of the model, in Hugging Face convention.
struct gen_tensor {
  std::string hf_name;
  std::string gguf_name;
  uint64_t rows = 0;  ///< 1 for vectors
  uint64_t cols = 0;
  bool is_matrix = true;       ///< stored as opts.type; vectors (norms, biases) stay f32
  uint32_t permute_heads = 0;  ///< GGUF llama: Q/K rows reordered over this many heads
};

std::vector<gen_tensor> tensor_list(const llama_config& c) {
  std::vector<gen_tensor> t;
  uint64_t q_rows = uint64_t{c.heads} * c.head_dim;
  uint64_t kv_rows = uint64_t{c.kv_heads} * c.head_dim;
  t.push_back({"model.embed_tokens.weight", "token_embd.weight", c.vocab, c.dim, true, 0});
  for (uint32_t l = 0; l < c.layers; ++l) {
    auto hf = fmt::format("model.layers.{}.", l);
    auto gg = fmt::format("blk.{}.", l);
    t.push_back({hf + "input_layernorm.weight", gg + "attn_norm.weight", 1, c.dim, false, 0});
    t.push_back(
        {hf + "self_attn.q_proj.weight", gg + "attn_q.weight", q_rows, c.dim, true, c.heads});
    t.push_back(
        {hf + "self_attn.k_proj.weight", gg + "attn_k.weight", kv_rows, c.dim, true, c.kv_heads});
    t.push_back({hf + "self_attn.v_proj.weight", gg + "attn_v.weight", kv_rows, c.dim, true, 0});
    if (c.qkv_bias) {
      t.push_back({hf + "self_attn.q_proj.bias", gg + "attn_q.bias", 1, q_rows, false, c.heads});
      t.push_back(
          {hf + "self_attn.k_proj.bias", gg + "attn_k.bias", 1, kv_rows, false, c.kv_heads});
      t.push_back({hf + "self_attn.v_proj.bias", gg + "attn_v.bias", 1, kv_rows, false, 0});
    }
    t.push_back(
        {hf + "self_attn.o_proj.weight", gg + "attn_output.weight", c.dim, q_rows, true, 0});
    t.push_back(
        {hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", 1, c.dim, false, 0});
    t.push_back({hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", c.ffn, c.dim, true, 0});
    t.push_back({hf + "mlp.up_proj.weight", gg + "ffn_up.weight", c.ffn, c.dim, true, 0});
    t.push_back({hf + "mlp.down_proj.weight", gg + "ffn_down.weight", c.dim, c.ffn, true, 0});
  }
  t.push_back({"model.norm.weight", "output_norm.weight", 1, c.dim, false, 0});
  t.push_back({"lm_head.weight", "output.weight", c.vocab, c.dim, true, 0});
  return t;
}

/// The values of one tensor (HF convention): matrices uniform in +-1/sqrt(fan_in) like
/// PyTorch's nn.Linear default (the embedding wider, +-0.5), norms 1 +- 0.1, biases +-0.1.
std::vector<float> generate(const gen_tensor& t, uint64_t seed) {
  size_t n = static_cast<size_t>(t.rows * t.cols);
  bool is_norm = t.hf_name.find("norm") != std::string::npos;
  if (is_norm) return uniform_values(seed, t.hf_name, n, 1.0f, 0.1f);
  if (!t.is_matrix) return uniform_values(seed, t.hf_name, n, 0.0f, 0.1f);
  if (t.hf_name == "model.embed_tokens.weight")
    return uniform_values(seed, t.hf_name, n, 0.0f, 0.5f);
  return uniform_values(seed, t.hf_name, n, 0.0f, 1.0f / std::sqrt(static_cast<float>(t.cols)));
}

/// errc::invalid_request: the output path the caller asked for cannot be written.
error_info cannot(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

result<void> write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return cannot(fmt::format("cannot create {}", path.string()));
  out << text;
  out.close();
  if (!out) return cannot(fmt::format("cannot write {}", path.string()));
  return {};
}

/// llama.cpp's `general.file_type` (LLAMA_FTYPE_*) for a file whose matrices are all `t`.
uint32_t gguf_file_type(dtype t) {
  switch (t) {
    case dtype::f32:
      return 0;
    case dtype::f16:
      return 1;
    case dtype::q4_0:
      return 2;
    case dtype::q4_1:
      return 3;
    case dtype::q8_0:
      return 7;
    case dtype::q5_0:
      return 8;
    case dtype::q5_1:
      return 9;
    case dtype::q4_k:
      return 14;  // Q4_K_S: every matrix Q4_K
    case dtype::q5_k:
      return 16;  // Q5_K_S
    case dtype::q6_k:
      return 18;
    case dtype::bf16:
      return 32;
  }
  return 0;
}

result<void> write_gguf(const make_model_options& opts, const llama_config& c,
                        const vocab_spec& vocab) {
  gguf_writer w;
  const std::string& a = c.arch;
  w.set_string("general.architecture", a);
  w.set_string("general.name", c.name);
  w.set_u32("general.file_type", gguf_file_type(opts.type));
  w.set_u32(a + ".vocab_size", c.vocab);
  w.set_u32(a + ".context_length", c.max_context);
  w.set_u32(a + ".embedding_length", c.dim);
  w.set_u32(a + ".block_count", c.layers);
  w.set_u32(a + ".feed_forward_length", c.ffn);
  w.set_u32(a + ".attention.head_count", c.heads);
  w.set_u32(a + ".attention.head_count_kv", c.kv_heads);
  w.set_u32(a + ".attention.key_length", c.head_dim);
  w.set_u32(a + ".attention.value_length", c.head_dim);
  w.set_u32(a + ".rope.dimension_count", c.head_dim);
  w.set_f32(a + ".rope.freq_base", c.rope_theta);
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", c.rms_eps);

  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", vocab.pre);
  w.set_strings("tokenizer.ggml.tokens", vocab.tokens);
  std::vector<int32_t> types;
  for (auto k : vocab.kinds)
    types.push_back(static_cast<int32_t>(k));
  w.set_i32s("tokenizer.ggml.token_type", std::move(types));
  w.set_strings("tokenizer.ggml.merges", vocab.merges);
  w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(vocab.bos));
  w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(vocab.eos));
  w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(vocab.unk));
  w.set_bool("tokenizer.ggml.add_bos_token", vocab.add_bos);
  w.set_bool("tokenizer.ggml.add_eos_token", false);

  // GGUF `llama` rotates adjacent pairs; qwen2 (NEOX) keeps Hugging Face's halves.
  bool permute = c.arch != "qwen2";
  for (const auto& t : tensor_list(c)) {
    auto values = generate(t, opts.seed);
    if (permute && t.permute_heads != 0)
      values = permute_for_adjacent(values, t.permute_heads, c.head_dim,
                                    static_cast<size_t>(t.is_matrix ? t.cols : 1));
    dtype type = t.is_matrix ? opts.type : dtype::f32;
    std::vector<uint64_t> shape = t.rows == 1 && !t.is_matrix
                                      ? std::vector<uint64_t>{t.cols}
                                      : std::vector<uint64_t>{t.cols, t.rows};
    w.add_tensor(t.gguf_name, type, std::move(shape),
                 is_block_dtype(type) ? encode_rows(values, type, static_cast<size_t>(t.cols))
                                      : encode(values, type));
  }
  if (c.scaling.type == rope_scaling::kind::llama3) {
    auto div = llama3_rope_divisors(c);
    std::vector<uint64_t> shape{div.size()};
    w.add_tensor("rope_freqs.weight", dtype::f32, std::move(shape), encode(div, dtype::f32));
  }
  return w.write(opts.output);
}

nlohmann::ordered_json hf_config(const make_model_options& opts, const llama_config& c) {
  bool qwen = c.arch == "qwen2";
  nlohmann::ordered_json j;
  j["_name_or_path"] = c.name;
  j["architectures"] = {qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = qwen ? "qwen2" : "llama";
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.ffn;
  j["num_hidden_layers"] = c.layers;
  j["num_attention_heads"] = c.heads;
  j["num_key_value_heads"] = c.kv_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_context;
  j["rms_norm_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.scaling.type == rope_scaling::kind::llama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.scaling.factor},
                         {"low_freq_factor", c.scaling.low_freq_factor},
                         {"high_freq_factor", c.scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.scaling.original_max_context}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (!qwen) j["attention_bias"] = c.qkv_bias;
  if (qwen) j["use_sliding_window"] = false;
  j["vocab_size"] = c.vocab;
  j["bos_token_id"] = c.bos;
  j["eos_token_id"] = c.eos;
  j["tie_word_embeddings"] = false;
  j["torch_dtype"] = hf_dtype_name(opts.type);
  j["transformers_version"] = "4.44.0";
  return j;
}

result<void> write_hf(const make_model_options& opts, const llama_config& c,
                      const vocab_spec& vocab) {
  fs::path dir = opts.output;
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    return cannot(fmt::format("{} exists and is not a directory", dir.string()));
  fs::create_directories(dir, ec);
  if (ec) return cannot(fmt::format("cannot create directory {}: {}", dir.string(), ec.message()));

  if (auto r = write_text(dir / "config.json", hf_config(opts, c).dump(2) + "\n"); !r) return r;
  nlohmann::ordered_json gen;
  gen["bos_token_id"] = c.bos;
  gen["eos_token_id"] = c.eos;
  if (auto r = write_text(dir / "generation_config.json", gen.dump(2) + "\n"); !r) return r;
  nlohmann::ordered_json tc;
  tc["add_bos_token"] = vocab.add_bos;
  tc["add_eos_token"] = false;
  tc["bos_token"] = vocab.tokens[static_cast<size_t>(vocab.bos)];
  tc["eos_token"] = vocab.tokens[static_cast<size_t>(vocab.eos)];
  tc["unk_token"] = vocab.tokens[static_cast<size_t>(vocab.unk)];
  tc["model_max_length"] = c.max_context;
  tc["tokenizer_class"] = "PreTrainedTokenizerFast";
  tc["clean_up_tokenization_spaces"] = false;
  if (auto r = write_text(dir / "tokenizer_config.json", tc.dump(2) + "\n"); !r) return r;
  if (auto r = write_tokenizer_json(vocab, (dir / "tokenizer.json").string()); !r) return r;

  safetensors_writer w;
  w.set_metadata("format", "pt");
  for (const auto& t : tensor_list(c)) {
    dtype type = t.is_matrix ? opts.type : dtype::f32;
    std::vector<uint64_t> shape =
        t.is_matrix ? std::vector<uint64_t>{t.rows, t.cols} : std::vector<uint64_t>{t.cols};
    w.add_tensor(t.hf_name, type, std::move(shape), encode(generate(t, opts.seed), type));
  }
  return w.write((dir / "model.safetensors").string());
}

}  // namespace

const std::vector<model_preset>& model_presets() {
  static const std::vector<model_preset> presets = build_presets();
  return presets;
}

const model_preset* find_model_preset(std::string_view name) {
  for (const auto& p : model_presets())
    if (p.name == name) return &p;
  return nullptr;
}

uint64_t model_parameter_count(const llama_config& c) {
  uint64_t n = 0;
  for (const auto& t : tensor_list(c))
    n += t.rows * t.cols;
  return n;
}

uint64_t model_weight_bytes(const llama_config& c, dtype t) {
  uint64_t n = 0;
  for (const auto& g : tensor_list(c))
    n += g.rows * row_bytes(g.is_matrix ? t : dtype::f32, g.cols);
  if (c.scaling.type == rope_scaling::kind::llama3) n += uint64_t{c.head_dim} / 2 * 4;
  return n;
}

uint64_t model_step_weight_bytes(const llama_config& c, dtype t) {
  uint64_t n = 0;
  for (const auto& g : tensor_list(c))
    if (g.is_matrix && g.hf_name != "model.embed_tokens.weight") n += g.rows * row_bytes(t, g.cols);
  return n;
}

result<void> make_model(const make_model_options& opts) {
  auto bad = [](std::string what) { return error_info{errc::invalid_request, std::move(what)}; };
  const model_preset* preset = find_model_preset(opts.preset);
  if (preset == nullptr) {
    std::string known;
    for (const auto& p : model_presets())
      known += (known.empty() ? "" : ", ") + p.name;
    return bad(fmt::format("unknown preset '{}' (known: {})", opts.preset, known));
  }
  if (opts.format != "gguf" && opts.format != "hf")
    return bad(fmt::format("unknown format '{}' (gguf or hf)", opts.format));
  if (opts.format == "hf" && is_block_dtype(opts.type))
    return bad(fmt::format("dtype '{}' has no safetensors form: --format hf takes f32, f16 or bf16",
                           dtype_name(opts.type)));
  if (opts.output.empty()) return bad("no output path given");
  const llama_config& c = preset->config;
  if (auto r = c.validate(); !r)
    return error_info{errc::internal, fmt::format("preset '{}' is inconsistent: {}", preset->name,
                                                  r.error().message)};
  for (const auto& t : tensor_list(c))
    if (t.is_matrix && t.cols % block_elems(opts.type) != 0)
      return bad(fmt::format(
          "dtype '{}' needs rows that are whole blocks of {} values; preset '{}' has {} with "
          "{} columns",
          dtype_name(opts.type), block_elems(opts.type), preset->name, t.gguf_name, t.cols));

  auto vocab = make_model_vocab(c.vocab);
  if (opts.format == "gguf") {
    std::error_code ec;
    auto parent = fs::path(opts.output).parent_path();
    if (!parent.empty()) fs::create_directories(parent, ec);
    return write_gguf(opts, c, vocab);  // the writer's errors name the file
  }
  return write_hf(opts, c, vocab);
}

}  // namespace tokenmill