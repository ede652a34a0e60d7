// make-model: presets, determinism, loading both formats, the tokenizer, and HF-vs-GGUF
// logit parity (the RoPE permutation of Q/K rows is what makes them agree).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "engine/block_pool.hpp"
#include "engine/cpu/kernels.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/make_model.hpp"
#include "engine/model.hpp"
#include "engine/text_tokenizer.hpp"
#include "test_result.hpp"

namespace fs = std::filesystem;
using namespace tokenmill;

namespace {

/// A fresh directory under the system temp dir, removed with everything in it.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           fmt::format("tokenmill-make-model-{}-{}", ::getpid(), counter++);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string write_model(const std::string& preset, const std::string& format, dtype type,
                        uint64_t seed, const std::string& out) {
  make_model_options o;
  o.preset = preset;
  o.format = format;
  o.type = type;
  o.seed = seed;
  o.output = out;
  return test::error_text(make_model(o));
}

std::shared_ptr<const loaded_model> load(const std::string& path) {
  auto m = load_model(path);
  INFO(path);
  if (!m) FAIL(m.error().message);
  return *m;
}

/// Logits of every position of `ids` from a fresh engine with an f32 KV cache.
std::vector<float> logits_of(std::shared_ptr<const loaded_model> m,
                             const std::vector<token_id>& ids) {
  cpu_engine_config cfg;
  cfg.threads = 1;
  cfg.kv_dtype_bytes = 4;
  cpu_engine eng(m, cfg);
  kv_layout layout = cpu_kv_layout(m->config, cfg);
  block_pool pool(layout, layout.blocks_for(static_cast<uint32_t>(ids.size())));
  auto blocks = *pool.allocate(layout.blocks_for(static_cast<uint32_t>(ids.size())));
  prefill_chunk chunk;
  chunk.tokens = ids;
  chunk.begin = 0;
  chunk.end = static_cast<uint32_t>(ids.size());
  chunk.blocks = blocks;
  return test::value_or_fail(eng.prefill_logits(pool, chunk));
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

const char* english =
    "The quick brown fox jumps over the lazy dog. Once upon a time, there was a king who "
    "had three children; they lived in a house by the river.\nIt's 2024 — naïve café!";

}  // namespace

TEST_CASE("every preset validates, names are unique, smallest first", "[make-model]") {
  const auto& presets = model_presets();
  REQUIRE(presets.size() >= 7);
  std::set<std::string> names;
  uint64_t prev = 0;
  for (const auto& p : presets) {
    INFO(p.name);
    CHECK(p.config.validate().ok());
    CHECK(names.insert(p.name).second);
    CHECK(find_model_preset(p.name) == &p);
    uint64_t n = model_parameter_count(p.config);
    CHECK(n >= prev);
    prev = n;
    CHECK(model_weight_bytes(p.config, dtype::f32) > model_weight_bytes(p.config, dtype::f16));
  }
  CHECK(find_model_preset("nope") == nullptr);
  // The benchmark preset is ~125M parameters; 1b is TinyLlama's ~1.1B; the GPU benchmark's
  // Llama-3.2-1B shape has 1.24B plus a separate 263M output head.
  uint64_t n125 = model_parameter_count(find_model_preset("125m")->config);
  CHECK(n125 > 110'000'000);
  CHECK(n125 < 140'000'000);
  uint64_t n1b = model_parameter_count(find_model_preset("1b")->config);
  CHECK(n1b > 900'000'000);
  CHECK(n1b < 1'300'000'000);
  // The trained bench-blend model's template (scripts/train-blend-model.py).
  const auto& rag = find_model_preset("rag-tiny")->config;
  CHECK(rag.head_dim == 64);
  CHECK(rag.heads / rag.kv_heads == 2);
  CHECK(rag.vocab == 2048);
  const auto& l32 = find_model_preset("llama3.2-1b")->config;
  CHECK(model_parameter_count(l32) == 1'498'482'688);
  CHECK(l32.head_dim == 64);
  CHECK(l32.scaling.type == rope_scaling::kind::llama3);
}

TEST_CASE("the same seed gives identical files, another seed different ones", "[make-model]") {
  temp_dir dir;
  REQUIRE(write_model("tiny", "gguf", dtype::f16, 7, dir / "a.gguf").empty());
  REQUIRE(write_model("tiny", "gguf", dtype::f16, 7, dir / "b.gguf").empty());
  REQUIRE(write_model("tiny", "gguf", dtype::f16, 8, dir / "c.gguf").empty());
  auto a = file_bytes(dir / "a.gguf");
  CHECK(a.size() > 100'000);
  CHECK(a == file_bytes(dir / "b.gguf"));
  CHECK(a != file_bytes(dir / "c.gguf"));

  REQUIRE(write_model("qwen2-tiny", "hf", dtype::bf16, 7, dir / "ha").empty());
  REQUIRE(write_model("qwen2-tiny", "hf", dtype::bf16, 7, dir / "hb").empty());
  REQUIRE(write_model("qwen2-tiny", "hf", dtype::bf16, 8, dir / "hc").empty());
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    INFO(f);
    CHECK(file_bytes(dir / (std::string("ha/") + f)) == file_bytes(dir / (std::string("hb/") + f)));
  }
  auto st = file_bytes(dir / "ha/model.safetensors");
  CHECK(st == file_bytes(dir / "hb/model.safetensors"));
  CHECK(st != file_bytes(dir / "hc/model.safetensors"));
}

TEST_CASE("tiny models load in both formats with the preset's config", "[make-model]") {
  temp_dir dir;
  for (const char* preset : {"tiny", "qwen2-tiny", "llama3-tiny"}) {
    const auto& want = find_model_preset(preset)->config;
    for (const char* format : {"gguf", "hf"}) {
      INFO(preset << " " << format);
      std::string path = dir / fmt::format("{}-{}", preset, format);
      REQUIRE(write_model(preset, format, dtype::f16, 1, path) == "");
      auto m = load(path);
      const auto& c = m->config;
      CHECK(m->format == format);
      CHECK(c.arch == want.arch);
      CHECK(c.dim == want.dim);
      CHECK(c.layers == want.layers);
      CHECK(c.heads == want.heads);
      CHECK(c.kv_heads == want.kv_heads);
      CHECK(c.head_dim == want.head_dim);
      CHECK(c.ffn == want.ffn);
      CHECK(c.vocab == want.vocab);
      CHECK(c.max_context == want.max_context);
      CHECK(c.rope_theta == want.rope_theta);
      CHECK(c.rms_eps == want.rms_eps);
      CHECK(c.qkv_bias == want.qkv_bias);
      CHECK_FALSE(c.tied_output);
      CHECK(c.bos == 1);
      CHECK(c.eos == 2);
      CHECK(m->tok->vocab_size() == want.vocab);
      bool gguf_llama = std::string(format) == "gguf" && want.arch == "llama";
      CHECK(c.rope == (gguf_llama ? rope_style::adjacent : rope_style::halves));
      CHECK(m->weights.layers.size() == want.layers);
      CHECK(m->weights.layers[0].wq.type == dtype::f16);
      CHECK(m->weights.layers[0].attn_norm.type == dtype::f32);
      CHECK(m->weights.layers[0].bq.present() == want.qkv_bias);
      if (want.scaling.type == rope_scaling::kind::llama3) {
        // GGUF carries the scaling as llama.cpp's rope_freqs tensor, HF in config.json.
        if (std::string(format) == "gguf") {
          REQUIRE(m->weights.rope_freqs.present());
          CHECK(m->weights.rope_freqs.cols * m->weights.rope_freqs.rows == want.head_dim / 2);
        } else {
          CHECK(c.scaling.type == rope_scaling::kind::llama3);
          CHECK(c.scaling.factor == want.scaling.factor);
          CHECK(c.scaling.original_max_context == want.scaling.original_max_context);
        }
      }
    }
  }
  // The GGUF name is the preset's.
  CHECK(load(dir / "tiny-gguf")->config.name == "tokenmill-tiny");
}

TEST_CASE("the vocabulary: exact size, unique tokens and merges, words are tokens",
          "[make-model]") {
  for (uint32_t n : {259u, 512u, 4096u, 32000u}) {
    INFO(n);
    auto v = make_model_vocab(n);
    CHECK(v.tokens.size() == n);
    CHECK(v.kinds.size() == n);
    CHECK(v.merges.size() == n - 259);
    CHECK(std::set<std::string>(v.tokens.begin(), v.tokens.end()).size() == n);
    CHECK(std::set<std::string>(v.merges.begin(), v.merges.end()).size() == v.merges.size());
    CHECK(v.tokens[0] == "<unk>");
    CHECK(v.tokens[1] == "<s>");
    CHECK(v.tokens[2] == "</s>");
    CHECK(v.kinds[1] == token_kind::control);
    CHECK(v.tokens[3 + 'a'] == "a");
    CHECK(v.tokens[3 + ' '] == "\xC4\xA0");  // Ġ
    CHECK(v.pre == "gpt2");
  }
  CHECK(make_model_vocab(4096).tokens == make_model_vocab(4096).tokens);

  auto tok = make_text_tokenizer(make_model_vocab(32000));
  REQUIRE(tok);
  for (const char* word : {" the", " of", " and", " people", " government", "The", " fox"}) {
    INFO(word);
    CHECK((*tok)->encode(word, false).size() == 1);
  }
  auto ids = (*tok)->encode(" the quick brown fox jumps over the lazy dog", false);
  CHECK(ids.size() == 9);
}

TEST_CASE("the tokenizer round-trips English, and both formats give the same ids", "[make-model]") {
  temp_dir dir;
  for (uint32_t n : {512u, 4096u}) {
    auto tok = make_text_tokenizer(make_model_vocab(n));
    REQUIRE(tok);
    auto ids = (*tok)->encode(english, true);
    REQUIRE(ids.size() > 5);
    CHECK(ids[0] == 1);
    std::string text;
    for (size_t i = 1; i < ids.size(); ++i)
      text += (*tok)->piece(ids[i]);
    CHECK(text == english);
    // Merges do apply (167 bytes of text: 114 tokens at 512 ids, 61 at 4096).
    CHECK(ids.size() < std::string(english).size() * (n == 512 ? 3 : 2) / 4);
  }
  REQUIRE(write_model("small", "gguf", dtype::bf16, 1, dir / "s.gguf").empty());
  REQUIRE(write_model("small", "hf", dtype::bf16, 1, dir / "s-hf").empty());
  auto g = load(dir / "s.gguf");
  auto h = load(dir / "s-hf");
  for (bool bos : {true, false}) {
    auto a = g->tok->encode(english, bos);
    CHECK(a == h->tok->encode(english, bos));
    CHECK(a == make_text_tokenizer(make_model_vocab(4096)).value()->encode(english, bos));
  }
  CHECK(g->tok->encode("</s>", false) == std::vector<token_id>{2});
}

TEST_CASE("HF and GGUF of the same model give the same logits", "[make-model]") {
  temp_dir dir;
  std::vector<token_id> ids;
  for (int i = 0; i < 40; ++i)
    ids.push_back(static_cast<token_id>(3 + (i * 97 + 11) % 500));
  ids[0] = 1;
  for (const char* preset : {"tiny", "qwen2-tiny", "llama3-tiny"}) {
    for (dtype type : {dtype::f32, dtype::f16}) {
      INFO(preset << " " << dtype_name(type));
      REQUIRE(write_model(preset, "gguf", type, 3, dir / "m.gguf").empty());
      REQUIRE(write_model(preset, "hf", type, 3, dir / "m-hf").empty());
      auto g = logits_of(load(dir / "m.gguf"), ids);
      auto h = logits_of(load(dir / "m-hf"), ids);
      REQUIRE(g.size() == ids.size() * find_model_preset(preset)->config.vocab);
      CHECK(max_abs_diff(g, h) <= 1e-4f);
      // Not trivially equal: the logits vary across positions and tokens.
      float spread = *std::max_element(g.begin(), g.end()) - *std::min_element(g.begin(), g.end());
      CHECK(spread > 0.1f);
      fs::remove_all(dir.path / "m-hf");
    }
  }
}

TEST_CASE("the RoPE pairing matters, so the parity exercises the Q/K permutation", "[make-model]") {
  // The HF weights read with adjacent-pair RoPE (what a GGUF llama file declares) give
  // other logits: the GGUF file agrees with HF only because its Q/K rows are permuted.
  temp_dir dir;
  REQUIRE(write_model("tiny", "hf", dtype::f32, 3, dir / "m-hf").empty());
  std::vector<token_id> ids{1, 50, 60, 70, 80, 90, 100, 110};
  auto h = load(dir / "m-hf");
  auto wrong = std::make_shared<loaded_model>(*h);
  wrong->config.rope = rope_style::adjacent;
  auto a = logits_of(h, ids);
  CHECK(max_abs_diff(a, logits_of(h, ids)) == 0);  // the engine is deterministic
  CHECK(max_abs_diff(a, logits_of(wrong, ids)) > 1e-3f);
}

TEST_CASE("make-model reports bad options by name", "[make-model]") {
  temp_dir dir;
  auto err = write_model("huge", "gguf", dtype::f16, 1, dir / "x.gguf");
  CHECK_THAT(err, Catch::Contains("unknown preset 'huge'") && Catch::Contains("tiny"));
  // tiny's rows (64 values) are not whole 256-value super-blocks.
  err = write_model("tiny", "gguf", dtype::q4_k, 1, dir / "x.gguf");
  CHECK_THAT(err, Catch::Contains("q4_k") && Catch::Contains("256") &&
                      Catch::Contains("token_embd.weight"));
  err = write_model("tiny", "hf", dtype::q4_0, 1, dir / "x-hf");
  CHECK_THAT(err, Catch::Contains("q4_0") && Catch::Contains("hf"));
  CHECK_FALSE(fs::exists(dir / "x-hf"));
  err = write_model("tiny", "onnx", dtype::f16, 1, dir / "x.onnx");
  CHECK_THAT(err, Catch::Contains("unknown format 'onnx'"));
  err = write_model("tiny", "gguf", dtype::f16, 1, "");
  CHECK_THAT(err, Catch::Contains("output"));
  err = write_model("tiny", "gguf", dtype::f16, 1, "/proc/tokenmill-nope/x.gguf");
  CHECK_THAT(err, Catch::Contains("/proc/tokenmill-nope/x.gguf"));
  // An HF output that is an existing file.
  { std::ofstream(dir / "file") << "x"; }
  err = write_model("tiny", "hf", dtype::f16, 1, dir / "file");
  CHECK_THAT(err, Catch::Contains("not a directory"));
  CHECK_FALSE(fs::exists(dir / "x.gguf"));
}

namespace {

/// `m` with every block-format matrix dequantized to f32 (the scalar reference): the same
/// model as the engine's F32 path sees it.
std::shared_ptr<const loaded_model> dequantized(const std::shared_ptr<const loaded_model>& m) {
  auto d = std::make_shared<loaded_model>(*m);
  auto conv = [&](tensor_view& t) {
    if (!t.present() || !is_block_dtype(t.type)) return;
    auto buf = std::make_shared<std::vector<float>>(t.rows * t.cols);
    for (uint64_t r = 0; r < t.rows; ++r)
      cpu::dequantize_row_scalar(t.type, t.row(r), buf->data() + r * t.cols, t.cols);
    t.type = dtype::f32;
    t.data = reinterpret_cast<const std::byte*>(buf->data());
    d->storage.push_back(buf);
  };
  conv(d->weights.tok_embd);
  conv(d->weights.output);
  for (auto& l : d->weights.layers)
    for (tensor_view* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      conv(*t);
  return d;
}

}  // namespace

TEST_CASE("quantized make-model files load and match the F32 pass on their dequantized weights",
          "[make-model]") {
  // The engine runs decode-sized batches (< 64 tokens) on 8-bit activations and integer dot
  // products, prefill-sized ones on f32 tiles (or on integers too where cpu::int_prefill
  // says so: the K formats on AVX-512 VNNI); the F32 model of the same dequantized weights
  // is the reference for both. Tolerance: 2% of the logits' spread for the int path (8-bit
  // activations; measured 0.5-0.9%), 1e-4 absolute for the f32-tile path.
  temp_dir dir;
  std::vector<token_id> ids;
  for (int i = 0; i < 70; ++i)
    ids.push_back(static_cast<token_id>(3 + (i * 131 + 7) % 2000));
  ids[0] = 1;
  const std::vector<token_id> short_ids(ids.begin(), ids.begin() + 24);
  for (dtype type : {dtype::q8_0, dtype::q4_0, dtype::q4_1, dtype::q5_0, dtype::q5_1, dtype::q4_k,
                     dtype::q5_k, dtype::q6_k}) {
    INFO(dtype_name(type));
    const auto path = dir / (std::string(dtype_name(type)) + ".gguf");
    REQUIRE(write_model("small", "gguf", type, 5, path).empty());
    auto m = load(path);
    CHECK(m->weights.layers[0].wq.type == type);
    CHECK(m->weights.output.type == type);
    CHECK(m->weights.layers[0].attn_norm.type == dtype::f32);
    CHECK(fs::file_size(path) >= model_weight_bytes(m->config, type));
    auto f = dequantized(m);
    auto want = logits_of(f, short_ids);
    auto got = logits_of(m, short_ids);
    const float spread =
        *std::max_element(want.begin(), want.end()) - *std::min_element(want.begin(), want.end());
    CHECK(spread > 0.1f);
    const float err = max_abs_diff(got, want);
    WARN(dtype_name(type) << ": int path max abs logit error " << err << " (spread " << spread
                          << ")");
    CHECK(err <= 0.02f * spread);
    auto want_long = logits_of(f, ids);
    auto got_long = logits_of(m, ids);
    // The first 64 rows run as one prefill batch: on f32 tiles, or on integers.
    const float err_long = max_abs_diff(got_long, want_long);
    if (cpu::int_prefill(cpu::best_quant_isa(), type)) {
      WARN(dtype_name(type) << ": int prefill max abs logit error " << err_long);
      CHECK(err_long <= 0.02f * spread);
    } else {
      CHECK(err_long <= 1e-4f);
    }
  }
}
