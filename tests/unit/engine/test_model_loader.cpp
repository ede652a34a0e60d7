// Over 600 lines: the GGUF and Hugging Face loading cases share the model writers defined here.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/gguf.hpp"
#include "engine/model.hpp"
#include "engine/safetensors.hpp"
#include "engine/text_tokenizer.hpp"
#include "golden.hpp"
#include "test_files.hpp"
#include "test_result.hpp"
#include "tests/skip.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace tokenmill;
using namespace tokenmill::test;

namespace {

// Shape of the test model: GQA, head_dim != dim / heads would be legal but keep it simple.
constexpr uint32_t dim = 64, layers = 2, heads = 4, kv_heads = 2, head_dim = 16, ffn = 96;

/// f32 bytes of n deterministic values.
std::vector<std::byte> f32_data(uint64_t n, float scale = 0.01f) {
  std::vector<std::byte> out(n * 4);
  for (uint64_t i = 0; i < n; ++i) {
    float v = std::sin(static_cast<float>(i) * 0.37f) * scale;
    std::memcpy(out.data() + 4 * i, &v, 4);
  }
  return out;
}

/// Data of `rows` x `cols` in `t`: f16 / bf16 alternate 1.0 and 0.5; q8_0 a byte pattern.
std::vector<std::byte> data_of(dtype t, uint64_t rows, uint64_t cols) {
  if (t == dtype::f32) return f32_data(rows * cols);
  std::vector<std::byte> out(rows * row_bytes(t, cols));
  if (t == dtype::q8_0) {
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = static_cast<std::byte>(i % 7);
    return out;
  }
  for (uint64_t i = 0; i < rows * cols; ++i) {
    uint16_t h = t == dtype::f16 ? (i % 2 ? 0x3800 : 0x3C00) : (i % 2 ? 0x3F00 : 0x3F80);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

/// SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, a few pieces.
void set_spm_vocab(gguf_writer& w, const std::set<std::string>& skip) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> kinds = {2, 3, 3};
  char buf[16];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    tokens.push_back(buf);
    kinds.push_back(6);
  }
  for (const char* p : {"\xe2\x96\x81", "\xe2\x96\x81h", "\xe2\x96\x81he", "ll", "o"}) {
    tokens.push_back(p);
    kinds.push_back(1);
  }
  std::vector<float> scores(tokens.size());
  for (size_t i = 0; i < scores.size(); ++i)
    scores[i] = -static_cast<float>(i);
  auto want = [&](const std::string& k) { return !skip.count(k); };
  if (want("tokenizer.ggml.model")) w.set_string("tokenizer.ggml.model", "llama");
  if (want("tokenizer.ggml.tokens")) w.set_strings("tokenizer.ggml.tokens", tokens);
  w.set_f32s("tokenizer.ggml.scores", scores);
  w.set_i32s("tokenizer.ggml.token_type", kinds);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
}
constexpr uint32_t spm_vocab = 3 + 256 + 5;

struct gguf_model_options {
  std::string arch = "llama";
  dtype weights = dtype::f32;
  dtype norms = dtype::f32;
  bool tied = false;
  bool bias = false;
  bool rope_freqs = false;
  std::set<std::string> skip;                            ///< keys and tensors left out
  std::map<std::string, std::vector<uint64_t>> reshape;  ///< GGUF order
  std::map<std::string, dtype> retype;
  std::function<void(gguf_writer&)> tweak;  ///< last-minute metadata changes
};

std::string write_gguf_model(const std::string& path, const gguf_model_options& o) {
  gguf_writer w;
  auto want = [&](const std::string& k) { return !o.skip.count(k); };
  const std::string a = o.arch + ".";
  if (want("general.architecture")) w.set_string("general.architecture", o.arch);
  w.set_string("general.name", "unit-test model");
  if (want(a + "embedding_length")) w.set_u32(a + "embedding_length", dim);
  if (want(a + "block_count")) w.set_u32(a + "block_count", layers);
  if (want(a + "feed_forward_length")) w.set_u32(a + "feed_forward_length", ffn);
  if (want(a + "attention.head_count")) w.set_u32(a + "attention.head_count", heads);
  if (want(a + "attention.head_count_kv")) w.set_u32(a + "attention.head_count_kv", kv_heads);
  if (want(a + "context_length")) w.set_u32(a + "context_length", 512);
  if (want(a + "rope.freq_base")) w.set_f32(a + "rope.freq_base", 500000.0f);
  if (want(a + "attention.layer_norm_rms_epsilon"))
    w.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
  if (want(a + "rope.dimension_count")) w.set_u32(a + "rope.dimension_count", head_dim);
  set_spm_vocab(w, o.skip);
  if (o.tweak) o.tweak(w);

  auto add = [&](const std::string& name, dtype t, std::vector<uint64_t> shape) {
    if (!want(name)) return;
    if (auto it = o.reshape.find(name); it != o.reshape.end()) shape = it->second;
    if (auto it = o.retype.find(name); it != o.retype.end()) t = it->second;
    uint64_t rows = 1;
    for (size_t d = 1; d < shape.size(); ++d)
      rows *= shape[d];
    w.add_tensor(name, t, shape, data_of(t, rows, shape[0]));
  };
  add("token_embd.weight", o.weights, {dim, spm_vocab});
  for (uint32_t l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", o.norms, {dim});
    add(b + "attn_q.weight", o.weights, {dim, heads * head_dim});
    add(b + "attn_k.weight", o.weights, {dim, kv_heads * head_dim});
    add(b + "attn_v.weight", o.weights, {dim, kv_heads * head_dim});
    add(b + "attn_output.weight", o.weights, {heads * head_dim, dim});
    if (o.bias) {
      add(b + "attn_q.bias", o.norms, {heads * head_dim});
      add(b + "attn_k.bias", o.norms, {kv_heads * head_dim});
      add(b + "attn_v.bias", o.norms, {kv_heads * head_dim});
    }
    add(b + "ffn_norm.weight", o.norms, {dim});
    add(b + "ffn_gate.weight", o.weights, {dim, ffn});
    add(b + "ffn_up.weight", o.weights, {dim, ffn});
    add(b + "ffn_down.weight", o.weights, {ffn, dim});
  }
  add("output_norm.weight", o.norms, {dim});
  if (!o.tied) add("output.weight", o.weights, {dim, spm_vocab});
  if (o.rope_freqs) add("rope_freqs.weight", dtype::f32, {head_dim / 2});
  return test::error_text(w.write(path));
}

/// Loads a GGUF model written with `o` and returns the error message ("" when it loaded).
std::string gguf_load_error(const gguf_model_options& o) {
  temp_path p("bad_model.gguf");
  REQUIRE(write_gguf_model(p.path, o).empty());
  auto m = load_model(p.path);
  if (m.ok()) return {};
  CHECK(m.error().code == errc::invalid_model);
  CHECK_THAT(m.error().message, Catch::StartsWith(p.path + ": "));
  return m.error().message;
}

float f32_at(const tensor_view& v, size_t i) {
  REQUIRE(v.type == dtype::f32);
  float x;
  std::memcpy(&x, v.data + 4 * i, 4);
  return x;
}

// --- Hugging Face -----------------------------------------------------------------------

/// GPT-2's byte -> printable code point mapping, as UTF-8.
std::vector<std::string> byte_level_alphabet() {
  std::vector<int> cps(256, -1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    cps[b] = printable ? b : 256 + extra++;
  }
  std::vector<std::string> out;
  for (int cp : cps) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

constexpr uint32_t hf_vocab = 256 + 1 + 2 + 3;  // bytes, "Ġa", two specials, padding

struct hf_model_options {
  std::string architecture = "LlamaForCausalLM";
  bool tied = false;
  bool split = true;  ///< tensors in two shards
  dtype weights = dtype::bf16;
  std::set<std::string> skip;                            ///< config keys and tensors left out
  std::map<std::string, std::vector<uint64_t>> reshape;  ///< HF order
  std::function<void(json&)> tweak;
  bool duplicate = false;  ///< the same tensor in both shards
};

void write_hf_model(const std::string& dir, const hf_model_options& o) {
  fs::create_directories(dir);
  json c = {{"architectures", {o.architecture}},
            {"hidden_size", dim},
            {"num_hidden_layers", layers},
            {"num_attention_heads", heads},
            {"num_key_value_heads", kv_heads},
            {"intermediate_size", ffn},
            {"vocab_size", hf_vocab},
            {"max_position_embeddings", 1024},
            {"rope_theta", 1000000.0},
            {"rms_norm_eps", 1e-5},
            {"tie_word_embeddings", o.tied},
            {"bos_token_id", 257},
            {"eos_token_id", {258, 257}},
            {"rope_scaling",
             {{"rope_type", "llama3"},
              {"factor", 8.0},
              {"low_freq_factor", 1.0},
              {"high_freq_factor", 4.0},
              {"original_max_position_embeddings", 8192}}}};
  for (const auto& k : o.skip)
    c.erase(k);
  if (o.tweak) o.tweak(c);
  if (!o.skip.count("config.json")) std::ofstream(dir + "/config.json") << c.dump(2);

  vocab_spec spec;
  spec.model = vocab_spec::model_kind::bpe;
  spec.tokens = byte_level_alphabet();
  spec.tokens.push_back(
      "\xc4\xa0"
      "a");  // "Ġa"
  spec.merges = {"\xc4\xa0 a"};
  spec.tokens.push_back("<|begin|>");
  spec.tokens.push_back("<|end|>");
  spec.kinds.assign(spec.tokens.size(), token_kind::normal);
  spec.kinds[257] = token_kind::control;
  spec.kinds[258] = token_kind::control;
  spec.bos = 257;
  spec.eos = 258;
  spec.add_bos = true;
  spec.add_space_prefix = false;
  if (!o.skip.count("tokenizer.json")) REQUIRE(write_tokenizer_json(spec, dir + "/tokenizer.json"));

  safetensors_writer s0, s1;
  auto add = [&](safetensors_writer& w, const std::string& name, dtype t,
                 std::vector<uint64_t> shape) {
    if (o.skip.count(name)) return;
    if (auto it = o.reshape.find(name); it != o.reshape.end()) shape = it->second;
    uint64_t rows = 1;
    for (size_t d = 0; d + 1 < shape.size(); ++d)
      rows *= shape[d];
    w.add_tensor(name, t, shape, data_of(t, rows, shape.back()));
  };
  add(s0, "model.embed_tokens.weight", o.weights, {hf_vocab, dim});
  const bool qwen = o.architecture == "Qwen2ForCausalLM";
  for (uint32_t l = 0; l < layers; ++l) {
    safetensors_writer& w = (o.split && l == layers - 1) ? s1 : s0;
    const std::string b = "model.layers." + std::to_string(l) + ".";
    add(w, b + "input_layernorm.weight", dtype::f32, {dim});
    add(w, b + "self_attn.q_proj.weight", o.weights, {heads * head_dim, dim});
    add(w, b + "self_attn.k_proj.weight", o.weights, {kv_heads * head_dim, dim});
    add(w, b + "self_attn.v_proj.weight", o.weights, {kv_heads * head_dim, dim});
    add(w, b + "self_attn.o_proj.weight", o.weights, {dim, heads * head_dim});
    if (qwen) {
      add(w, b + "self_attn.q_proj.bias", o.weights, {heads * head_dim});
      add(w, b + "self_attn.k_proj.bias", o.weights, {kv_heads * head_dim});
      add(w, b + "self_attn.v_proj.bias", o.weights, {kv_heads * head_dim});
    }
    add(w, b + "post_attention_layernorm.weight", o.weights, {dim});
    add(w, b + "mlp.gate_proj.weight", o.weights, {ffn, dim});
    add(w, b + "mlp.up_proj.weight", o.weights, {ffn, dim});
    add(w, b + "mlp.down_proj.weight", o.weights, {dim, ffn});
  }
  add(s1, "model.norm.weight", dtype::f32, {dim});
  if (!o.tied) add(s1, "lm_head.weight", o.weights, {hf_vocab, dim});
  if (o.duplicate) add(s1, "model.embed_tokens.weight", o.weights, {hf_vocab, dim});
  REQUIRE(s0.write(dir + "/model-00001-of-00002.safetensors"));
  REQUIRE(s1.write(dir + "/model-00002-of-00002.safetensors"));
}

std::string hf_load_error(const hf_model_options& o) {
  temp_path d("bad_hf");
  write_hf_model(d.path, o);
  auto m = load_model(d.path);
  if (m.ok()) return {};
  CHECK(m.error().code == errc::invalid_model);
  CHECK_THAT(m.error().message, Catch::StartsWith(d.path));
  return m.error().message;
}

}  // namespace

TEST_CASE("llama_config::validate", "[loader]") {
  llama_config c;
  c.dim = 64;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 16;
  c.ffn = 96;
  c.vocab = 100;
  c.max_context = 128;
  CHECK(c.validate().ok());
  auto broken = [&](auto change) {
    llama_config d = c;
    change(d);
    return test::error_text(d.validate());
  };
  CHECK_THAT(broken([](llama_config& d) { d.dim = 0; }), Catch::Contains("dim"));
  CHECK_FALSE(broken([](llama_config& d) { d.layers = 0; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.vocab = 0; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.ffn = 0; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.max_context = 0; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.kv_heads = 3; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.kv_heads = 0; }).empty());
  CHECK_THAT(broken([](llama_config& d) { d.head_dim = 15; }), Catch::Contains("odd"));
  CHECK_FALSE(broken([](llama_config& d) { d.rms_eps = 0; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.rms_eps = NAN; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.rope_theta = -1; }).empty());
  CHECK_FALSE(broken([](llama_config& d) { d.bos = 100; }).empty());
  CHECK(broken([](llama_config& d) { d.bos = -1; }).empty());
  CHECK_FALSE(broken([](llama_config& d) {
                d.scaling.type = rope_scaling::kind::llama3;
                d.scaling.factor = 8;
                d.scaling.high_freq_factor = d.scaling.low_freq_factor;
              }).empty());
}

TEST_CASE("loader reads a GGUF llama model", "[loader]") {
  temp_path p("model.gguf");
  gguf_model_options o;
  o.norms = dtype::f16;  // converted to f32 copies
  o.weights = dtype::q8_0;
  o.rope_freqs = true;
  REQUIRE(write_gguf_model(p.path, o).empty());
  auto r = load_model(p.path);
  REQUIRE(r.ok());
  const loaded_model& m = **r;
  CHECK(m.format == "gguf");
  CHECK(m.path == p.path);
  const llama_config& c = m.config;
  CHECK(c.arch == "llama");
  CHECK(c.name == "unit-test model");
  CHECK(c.dim == dim);
  CHECK(c.layers == layers);
  CHECK(c.heads == heads);
  CHECK(c.kv_heads == kv_heads);
  CHECK(c.head_dim == head_dim);
  CHECK(c.ffn == ffn);
  CHECK(c.vocab == spm_vocab);
  CHECK(c.max_context == 512);
  CHECK(c.rope_theta == 500000.0f);
  CHECK(c.rms_eps == 1e-6f);
  CHECK(c.rope == rope_style::adjacent);
  CHECK_FALSE(c.qkv_bias);
  CHECK_FALSE(c.tied_output);
  CHECK(c.bos == 1);
  CHECK(c.eos == 2);
  CHECK(c.add_bos);
  CHECK(c.validate().ok());
  REQUIRE(m.tok);
  CHECK(m.tok->vocab_size() == spm_vocab);

  const model_weights& w = m.weights;
  CHECK(w.tok_embd.type == dtype::q8_0);
  CHECK(w.tok_embd.rows == spm_vocab);
  CHECK(w.tok_embd.cols == dim);
  REQUIRE(w.layers.size() == layers);
  const layer_weights& l1 = w.layers[1];
  CHECK(l1.wq.rows == heads * head_dim);
  CHECK(l1.wq.cols == dim);
  CHECK(l1.wk.rows == kv_heads * head_dim);
  CHECK(l1.wo.rows == dim);
  CHECK(l1.wo.cols == heads * head_dim);
  CHECK(l1.w_down.rows == dim);
  CHECK(l1.w_down.cols == ffn);
  CHECK(l1.w_gate.rows == ffn);
  CHECK(l1.wq.name == "blk.1.attn_q.weight");
  CHECK_FALSE(l1.bq.present());
  REQUIRE(l1.attn_norm.present());
  CHECK(l1.attn_norm.type == dtype::f32);
  CHECK(l1.attn_norm.cols == dim);
  CHECK(f32_at(l1.attn_norm, 0) == 1.0f);
  CHECK(f32_at(l1.attn_norm, 1) == 0.5f);
  CHECK(f32_at(l1.ffn_norm, 3) == 0.5f);
  CHECK(f32_at(w.out_norm, 2) == 1.0f);
  REQUIRE(w.output.present());
  CHECK(w.output.data != w.tok_embd.data);
  REQUIRE(w.rope_freqs.present());
  CHECK(w.rope_freqs.cols == head_dim / 2);
  CHECK(std::abs(f32_at(w.rope_freqs, 1) - std::sin(0.37f) * 0.01f) < 1e-7f);
  for (const auto& v : {l1.attn_norm, l1.ffn_norm, w.out_norm, w.rope_freqs})
    CHECK(reinterpret_cast<uintptr_t>(v.data) % 4 == 0);
}

TEST_CASE("loader: GGUF qwen2 with biases, tied output, bf16", "[loader]") {
  temp_path p("qwen.gguf");
  gguf_model_options o;
  o.arch = "qwen2";
  o.bias = true;
  o.tied = true;
  o.weights = dtype::bf16;
  o.norms = dtype::bf16;
  o.skip = {"qwen2.rope.dimension_count", "qwen2.rope.freq_base"};
  REQUIRE(write_gguf_model(p.path, o).empty());
  auto r = load_model(p.path);
  REQUIRE(r.ok());
  const loaded_model& m = **r;
  CHECK(m.config.arch == "qwen2");
  CHECK(m.config.rope == rope_style::halves);
  CHECK(m.config.kv_heads == kv_heads);
  CHECK(m.config.head_dim == dim / heads);
  CHECK(m.config.rope_theta == 10000.0f);
  CHECK(m.config.qkv_bias);
  CHECK(m.config.tied_output);
  CHECK(m.weights.output.data == m.weights.tok_embd.data);
  const layer_weights& l0 = m.weights.layers[0];
  REQUIRE(l0.bq.present());
  CHECK(l0.bq.cols == heads * head_dim);
  CHECK(l0.bk.cols == kv_heads * head_dim);
  CHECK(f32_at(l0.bv, 0) == 1.0f);
  CHECK(f32_at(l0.bv, 1) == 0.5f);
  CHECK_FALSE(m.weights.rope_freqs.present());
}

TEST_CASE("loader: GGUF token ids stored as u32 0xFFFFFFFF mean none", "[loader]") {
  temp_path p("no_unk.gguf");
  gguf_model_options o;
  o.tweak = [](gguf_writer& w) { w.set_u32("tokenizer.ggml.unknown_token_id", 0xFFFFFFFFu); };
  REQUIRE(write_gguf_model(p.path, o).empty());
  auto r = load_model(p.path);
  INFO((r.ok() ? std::string() : r.error().message));
  REQUIRE(r.ok());
  CHECK((*r)->config.bos == 1);
}

TEST_CASE("loader: GGUF chat template", "[loader]") {
  temp_path p("chat.gguf");
  gguf_model_options o;
  SECTION("absent: empty") {
    REQUIRE(write_gguf_model(p.path, o).empty());
    auto r = load_model(p.path);
    REQUIRE(r.ok());
    CHECK((*r)->chat_template.empty());
  }
  SECTION("a string: kept as stored") {
    o.tweak = [](gguf_writer& w) {
      w.set_string("tokenizer.chat_template", "{{ '<|start_header_id|>' }}");
    };
    REQUIRE(write_gguf_model(p.path, o).empty());
    auto r = load_model(p.path);
    REQUIRE(r.ok());
    CHECK((*r)->chat_template == "{{ '<|start_header_id|>' }}");
  }
  SECTION("another type: refused, naming the key") {
    o.tweak = [](gguf_writer& w) { w.set_u32("tokenizer.chat_template", 3); };
    REQUIRE(write_gguf_model(p.path, o).empty());
    auto r = load_model(p.path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("tokenizer.chat_template") != std::string::npos);
  }
}

TEST_CASE("loader: the model outlives the files' names", "[loader]") {
  std::shared_ptr<const loaded_model> m;
  {
    temp_path p("unlinked.gguf");
    REQUIRE(write_gguf_model(p.path, {}).empty());
    auto r = load_model(p.path);
    REQUIRE(r.ok());
    m = *r;
  }
  // the file is gone but the mapping keeps the data
  CHECK(m->weights.layers[1].w_up.row(ffn - 1)[4 * dim - 1] ==
        f32_data(ffn * dim)[4 * ffn * dim - 1]);
}

TEST_CASE("loader: bad GGUF models are errors naming the key or tensor", "[loader]") {
  SECTION("wrong shape") {
    gguf_model_options o;
    o.reshape["blk.1.attn_q.weight"] = {dim, heads * head_dim - 1};
    CHECK_THAT(gguf_load_error(o), Catch::Contains("tensor 'blk.1.attn_q.weight': shape [64, 63], "
                                                   "expected [64, 64]"));
    gguf_model_options k;
    k.reshape["blk.0.attn_k.weight"] = {dim, heads * head_dim};  // MHA-sized K in a GQA model
    CHECK_THAT(gguf_load_error(k), Catch::Contains("'blk.0.attn_k.weight'"));
    gguf_model_options n;
    n.reshape["output_norm.weight"] = {dim, 1};
    CHECK_THAT(gguf_load_error(n), Catch::Contains("'output_norm.weight'"));
    gguf_model_options kv;  // head_count_kv defaults to head_count: K and V are too small
    kv.skip = {"llama.attention.head_count_kv"};
    CHECK_THAT(gguf_load_error(kv), Catch::Contains("tensor 'blk.0.attn_k.weight': shape [64, 32], "
                                                    "expected [64, 64]"));
    gguf_model_options e;
    e.reshape["token_embd.weight"] = {dim, spm_vocab + 1};
    CHECK_THAT(gguf_load_error(e), Catch::Contains("'token_embd.weight'"));
  }
  SECTION("missing tensor") {
    gguf_model_options o;
    o.skip = {"blk.1.ffn_down.weight"};
    CHECK_THAT(gguf_load_error(o),
               Catch::Contains("'blk.1.ffn_down.weight'") && Catch::Contains("missing"));
    gguf_model_options b;
    b.bias = true;
    b.skip = {"blk.1.attn_v.bias"};
    CHECK_THAT(gguf_load_error(b), Catch::Contains("'blk.1.attn_v.bias'"));
  }
  SECTION("norms must not be quantized") {
    gguf_model_options o;
    o.retype["blk.0.ffn_norm.weight"] = dtype::q8_0;
    CHECK_THAT(gguf_load_error(o),
               Catch::Contains("'blk.0.ffn_norm.weight'") && Catch::Contains("q8_0"));
  }
  SECTION("missing metadata key") {
    for (std::string key : {"general.architecture", "llama.embedding_length", "llama.block_count",
                            "llama.feed_forward_length", "llama.attention.head_count",
                            "llama.context_length", "llama.attention.layer_norm_rms_epsilon",
                            "tokenizer.ggml.model", "tokenizer.ggml.tokens"}) {
      gguf_model_options o;
      o.skip = {key};
      INFO(key);
      CHECK_THAT(gguf_load_error(o), Catch::Contains("'" + key + "'"));
    }
  }
  SECTION("wrong metadata type") {
    gguf_model_options o;
    o.tweak = [](gguf_writer& w) { w.set_string("llama.block_count", "four"); };
    CHECK_THAT(gguf_load_error(o),
               Catch::Contains("'llama.block_count'") && Catch::Contains("string"));
    gguf_model_options f;
    f.tweak = [](gguf_writer& w) { w.set_u32("llama.rope.freq_base", 10000); };
    CHECK_THAT(gguf_load_error(f), Catch::Contains("'llama.rope.freq_base'"));
    gguf_model_options t;
    t.tweak = [](gguf_writer& w) { w.set_u32("tokenizer.ggml.tokens", 3); };
    CHECK_THAT(gguf_load_error(t), Catch::Contains("'tokenizer.ggml.tokens'"));
    gguf_model_options b;
    b.tweak = [](gguf_writer& w) { w.set_u32("tokenizer.ggml.bos_token_id", 100000); };
    CHECK_THAT(gguf_load_error(b), Catch::Contains("'tokenizer.ggml.bos_token_id'"));
  }
  SECTION("unsupported architecture and tokenizer") {
    gguf_model_options o;
    o.tweak = [](gguf_writer& w) { w.set_string("general.architecture", "falcon"); };
    CHECK_THAT(gguf_load_error(o),
               Catch::Contains("'general.architecture'") && Catch::Contains("falcon"));
    gguf_model_options t;
    t.tweak = [](gguf_writer& w) { w.set_string("tokenizer.ggml.model", "bert"); };
    CHECK_THAT(gguf_load_error(t),
               Catch::Contains("'tokenizer.ggml.model'") && Catch::Contains("bert"));
  }
  SECTION("inconsistent hyper-parameters") {
    gguf_model_options o;
    o.tweak = [](gguf_writer& w) { w.set_u32("llama.attention.head_count_kv", 3); };
    CHECK_THAT(gguf_load_error(o), Catch::Contains("multiple"));
    gguf_model_options z;
    z.tweak = [](gguf_writer& w) { w.set_u32("llama.attention.head_count", 0); };
    CHECK_THAT(gguf_load_error(z), Catch::Contains("'llama.attention.head_count'"));
    gguf_model_options e;
    e.tweak = [](gguf_writer& w) { w.set_f32("llama.attention.layer_norm_rms_epsilon", 0); };
    CHECK_THAT(gguf_load_error(e), Catch::Contains("epsilon"));
    gguf_model_options v;
    v.tweak = [](gguf_writer& w) { w.set_u32("llama.vocab_size", 10); };
    CHECK_THAT(gguf_load_error(v), Catch::Contains("vocabulary"));
  }
  SECTION("not a model at all") {
    auto r = load_model("/nonexistent/model.gguf");
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("/nonexistent/model.gguf"));
    temp_path p("garbage.gguf");
    std::ofstream(p.path) << "not a gguf file at all";
    auto g = load_model(p.path);
    REQUIRE_FALSE(g.ok());
    CHECK_THAT(g.error().message, Catch::Contains("magic"));
  }
}

TEST_CASE("loader: every truncation of a GGUF model is an error", "[loader]") {
  temp_path src("trunc_model.gguf");
  temp_path p("trunc_model_cut.gguf");
  REQUIRE(write_gguf_model(src.path, {}).empty());
  std::ifstream in(src.path, std::ios::binary);
  std::string full((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // strides through the header (gguf tests cut at every byte) and through the data
  std::vector<size_t> cuts;
  for (size_t n = 0; n < 8192 && n < full.size(); n += 7)
    cuts.push_back(n);
  for (size_t n = 8192; n < full.size(); n += 997)
    cuts.push_back(n);
  cuts.push_back(full.size() - 1);
  std::ofstream(p.path, std::ios::binary | std::ios::trunc).write(full.data(), full.size());
  REQUIRE(load_model(p.path).ok());
  for (auto it = cuts.rbegin(); it != cuts.rend(); ++it) {
    fs::resize_file(p.path, *it);
    auto r = load_model(p.path);
    INFO("truncated to " << *it << " of " << full.size());
    REQUIRE_FALSE(r.ok());
  }
}

TEST_CASE("loader reads a Hugging Face directory", "[loader]") {
  temp_path d("hf_model");
  write_hf_model(d.path, {});
  auto r = load_model(d.path);
  REQUIRE(r.ok());
  const loaded_model& m = **r;
  CHECK(m.format == "hf");
  const llama_config& c = m.config;
  CHECK(c.arch == "llama");
  CHECK(c.dim == dim);
  CHECK(c.layers == layers);
  CHECK(c.heads == heads);
  CHECK(c.kv_heads == kv_heads);
  CHECK(c.head_dim == head_dim);
  CHECK(c.ffn == ffn);
  CHECK(c.vocab == hf_vocab);
  CHECK(c.max_context == 1024);
  CHECK(c.rope_theta == 1000000.0f);
  CHECK(c.rms_eps == 1e-5f);
  CHECK(c.rope == rope_style::halves);
  CHECK(c.scaling.type == rope_scaling::kind::llama3);
  CHECK(c.scaling.factor == 8.0f);
  CHECK(c.scaling.high_freq_factor == 4.0f);
  CHECK(c.scaling.original_max_context == 8192);
  CHECK_FALSE(c.qkv_bias);
  CHECK_FALSE(c.tied_output);
  CHECK(c.bos == 257);
  CHECK(c.eos == 258);
  REQUIRE(m.tok);
  const model_weights& w = m.weights;
  CHECK(w.tok_embd.type == dtype::bf16);
  CHECK(w.tok_embd.rows == hf_vocab);
  CHECK(w.tok_embd.cols == dim);
  REQUIRE(w.layers.size() == layers);
  CHECK(w.layers[1].wk.rows == kv_heads * head_dim);
  CHECK(w.layers[1].w_down.cols == ffn);
  CHECK(f32_at(w.layers[1].ffn_norm, 0) == 1.0f);  // bf16 converted
  CHECK(f32_at(w.layers[1].ffn_norm, 1) == 0.5f);
  CHECK(w.output.present());
  CHECK(w.output.data != w.tok_embd.data);
  CHECK_FALSE(w.rope_freqs.present());
}

TEST_CASE("loader: Hugging Face Qwen2 with biases and tied embeddings", "[loader]") {
  temp_path d("hf_qwen");
  hf_model_options o;
  o.architecture = "Qwen2ForCausalLM";
  o.tied = true;
  o.weights = dtype::f16;
  o.split = false;
  o.tweak = [](json& c) {
    c.erase("rope_scaling");
    c["head_dim"] = nullptr;
  };
  write_hf_model(d.path, o);
  auto r = load_model(d.path);
  REQUIRE(r.ok());
  const loaded_model& m = **r;
  CHECK(m.config.arch == "qwen2");
  CHECK(m.config.qkv_bias);
  CHECK(m.config.tied_output);
  CHECK(m.config.scaling.type == rope_scaling::kind::none);
  CHECK(m.weights.output.data == m.weights.tok_embd.data);
  CHECK(f32_at(m.weights.layers[0].bq, 1) == 0.5f);
  CHECK(m.weights.layers[0].bk.cols == kv_heads * head_dim);
}

TEST_CASE("loader: bad Hugging Face directories are errors naming the file and key", "[loader]") {
  SECTION("missing files") {
    hf_model_options o;
    o.skip = {"config.json"};
    CHECK_THAT(hf_load_error(o), Catch::Contains("config.json"));
    hf_model_options t;
    t.skip = {"tokenizer.json"};
    CHECK_THAT(hf_load_error(t), Catch::Contains("tokenizer.json"));
    temp_path empty("hf_empty");
    fs::create_directories(empty.path);
    CHECK_THAT(load_model(empty.path).error().message, Catch::Contains("config.json"));
  }
  SECTION("missing and mistyped keys") {
    for (std::string key : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size", "vocab_size", "architectures"}) {
      hf_model_options o;
      o.skip = {key};
      INFO(key);
      CHECK_THAT(hf_load_error(o), Catch::Contains("'" + key + "'"));
    }
    hf_model_options o;
    o.tweak = [](json& c) { c["hidden_size"] = "64"; };
    CHECK_THAT(hf_load_error(o), Catch::Contains("'hidden_size'") && Catch::Contains("string"));
    hf_model_options f;
    f.tweak = [](json& c) { c["rms_norm_eps"] = "small"; };
    CHECK_THAT(hf_load_error(f), Catch::Contains("'rms_norm_eps'"));
    hf_model_options b;
    b.tweak = [](json& c) { c["tie_word_embeddings"] = 1; };
    CHECK_THAT(hf_load_error(b), Catch::Contains("'tie_word_embeddings'"));
    hf_model_options n;
    n.tweak = [](json& c) { c["num_hidden_layers"] = -2; };
    CHECK_THAT(hf_load_error(n), Catch::Contains("'num_hidden_layers'"));
    hf_model_options e;
    e.tweak = [](json& c) { c["eos_token_id"] = "</s>"; };
    CHECK_THAT(hf_load_error(e), Catch::Contains("'eos_token_id'"));
    hf_model_options s;
    s.tweak = [](json& c) { c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; };
    CHECK_THAT(hf_load_error(s), Catch::Contains("yarn"));
    hf_model_options a;
    a.tweak = [](json& c) { c["architectures"] = {"GPT2LMHeadModel"}; };
    CHECK_THAT(hf_load_error(a), Catch::Contains("GPT2LMHeadModel"));
  }
  SECTION("bad config.json") {
    temp_path d("hf_badjson");
    write_hf_model(d.path, {});
    std::ofstream(d.path + "/config.json") << "{\"hidden_size\": ";
    auto r = load_model(d.path);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("config.json") && Catch::Contains("JSON"));
  }
  SECTION("missing and misshapen tensors") {
    hf_model_options o;
    o.skip = {"model.layers.1.mlp.up_proj.weight"};
    CHECK_THAT(hf_load_error(o), Catch::Contains("'model.layers.1.mlp.up_proj.weight'"));
    hf_model_options s;
    s.reshape["model.layers.0.self_attn.o_proj.weight"] = {heads * head_dim, dim + 1};
    CHECK_THAT(hf_load_error(s),
               Catch::Contains("model-00001-of-00002.safetensors: tensor "
                               "'model.layers.0.self_attn.o_proj.weight': shape [64, 65], "
                               "expected [64, 64]"));
    hf_model_options q;
    q.architecture = "Qwen2ForCausalLM";
    q.skip = {"model.layers.0.self_attn.k_proj.bias"};
    CHECK_THAT(hf_load_error(q), Catch::Contains("'model.layers.0.self_attn.k_proj.bias'"));
  }
  SECTION("a tensor in two shards") {
    hf_model_options o;
    o.duplicate = true;
    CHECK_THAT(hf_load_error(o), Catch::Contains("'model.embed_tokens.weight'") &&
                                     Catch::Contains("model-00002-of-00002.safetensors"));
  }
  SECTION("untied model without lm_head is tied") {
    hf_model_options o;
    o.skip = {"lm_head.weight"};
    CHECK(hf_load_error(o).empty());
  }
}

TEST_CASE("loader reads the golden tiny.gguf", "[loader]") {
  std::string dir = tokenmill::test::golden_dir();
  if (dir.empty())
    TM_SKIP("golden data absent (tests/data/golden missing; set TOKENMILL_GOLDEN_DIR)");
  auto r = load_model(dir + "/tiny.gguf");
  REQUIRE(r.ok());
  const llama_config& c = (*r)->config;
  CHECK(c.arch == "llama");
  CHECK(c.dim == 256);
  CHECK(c.layers == 4);
  CHECK(c.heads == 8);
  CHECK(c.kv_heads == 4);
  CHECK(c.head_dim == 32);
  CHECK(c.ffn == 768);
  CHECK(c.vocab == 8192);
  CHECK(c.max_context == 2048);
  CHECK(c.rope_theta == 10000.0f);
  CHECK(c.rms_eps == 1e-5f);
  CHECK(c.rope == rope_style::adjacent);
  CHECK(c.bos == 1);
  CHECK(c.eos == 2);
  CHECK(c.add_bos);
  CHECK((*r)->tok->vocab_size() == 8192);
  CHECK((*r)->weights.layers.size() == 4);
  CHECK((*r)->weights.tok_embd.type == dtype::f32);
}
