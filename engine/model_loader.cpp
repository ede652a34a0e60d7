/// load_model: GGUF files and Hugging Face directories into a validated loaded_model.
/// Over 600 lines: the GGUF and HF loaders share one weight binder; a split would only export it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/gguf.hpp"
#include "engine/model.hpp"
#include "engine/safetensors.hpp"
#include "engine/text_tokenizer.hpp"

namespace tokenmill {

result<void> llama_config::validate() const {
  auto bad = [](std::string what) { return error_info{errc::invalid_model, std::move(what)}; };
  auto zero = [&](const char* what) { return bad(std::string(what) + " is 0"); };
  if (dim == 0) return zero("embedding width (dim)");
  if (layers == 0) return zero("layer count");
  if (heads == 0) return zero("head count");
  if (kv_heads == 0) return zero("key/value head count");
  if (head_dim == 0) return zero("head_dim");
  if (ffn == 0) return zero("feed-forward width");
  if (vocab == 0) return zero("vocabulary size");
  if (max_context == 0) return zero("context length");
  if (heads % kv_heads != 0)
    return bad("head count " + std::to_string(heads) +
               " is not a multiple of the key/value head count " + std::to_string(kv_heads));
  if (head_dim % 2 != 0) return bad("head_dim " + std::to_string(head_dim) + " is odd");
  if (!(rms_eps > 0) || !std::isfinite(rms_eps))
    return bad("RMSNorm epsilon " + std::to_string(rms_eps) + " is not a positive number");
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    return bad("RoPE base " + std::to_string(rope_theta) + " is not a positive number");
  if (scaling.type != rope_scaling::kind::none) {
    if (!(scaling.factor > 0) || !std::isfinite(scaling.factor))
      return bad("RoPE scaling factor " + std::to_string(scaling.factor) +
                 " is not a positive number");
  }
  if (scaling.type == rope_scaling::kind::llama3) {
    if (!(scaling.low_freq_factor > 0) || !std::isfinite(scaling.high_freq_factor) ||
        !(scaling.high_freq_factor > scaling.low_freq_factor))
      return bad("RoPE llama3 scaling needs 0 < low_freq_factor < high_freq_factor");
    if (scaling.original_max_context == 0) return zero("RoPE original_max_position_embeddings");
  }
  if (bos >= 0 && static_cast<uint64_t>(bos) >= vocab)
    return bad("BOS token " + std::to_string(bos) + " is outside the vocabulary of " +
               std::to_string(vocab));
  if (eos >= 0 && static_cast<uint64_t>(eos) >= vocab)
    return bad("EOS token " + std::to_string(eos) + " is outside the vocabulary of " +
               std::to_string(vocab));
  return {};
}

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

error_info model_error(const std::string& where, const std::string& what) {
  return error_info{errc::invalid_model, where + ": " + what};
}

/// Thrown inside the loader only; load_model turns it into an error value.
struct load_error {
  error_info err;
};

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw load_error{model_error(where, what)};
}

template <class T>
T unwrap(result<T> r) {
  if (!r) throw load_error{r.error()};
  return std::move(r.value());
}

float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::string shape_text(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i)
    out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

/// A tensor as one of the formats stores it.
struct found_tensor {
  std::string file;             ///< for error messages
  std::vector<uint64_t> shape;  ///< in the file's order
  dtype type = dtype::f32;
  const std::byte* data = nullptr;  ///< in the file's mapping
  uint64_t offset = 0;              ///< of `data` in `file`
};

/// Finds tensors by name in one format and checks them against the config.
class weight_binder {
 public:
  /// `innermost_first`: GGUF lists dimensions columns first, safetensors rows first.
  weight_binder(std::string where, bool innermost_first,
                std::function<std::optional<found_tensor>(const std::string&)> lookup,
                loaded_model& m)
      : where_(std::move(where)),
        innermost_first_(innermost_first),
        lookup_(std::move(lookup)),
        m_(m) {}

  bool has(const std::string& name) const { return lookup_(name).has_value(); }

  /// A [rows][cols] weight matrix of any supported dtype.
  tensor_view matrix(const std::string& name, uint64_t rows, uint64_t cols) {
    found_tensor t = require(name);
    std::vector<uint64_t> want =
        innermost_first_ ? std::vector<uint64_t>{cols, rows} : std::vector<uint64_t>{rows, cols};
    check_shape(t, name, want);
    tensor_view v{name, t.type, rows, cols, t.data};
    size_t align = t.type == dtype::f32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(t.data) % align != 0) {  // unaligned data: copy it
      auto copy =
          std::make_shared<std::vector<std::byte>>(t.data, t.data + rows * row_bytes(t.type, cols));
      v.data = copy->data();
      m_.storage.push_back(copy);
    }
    return v;
  }

  /// A vector of `n` values as f32 (converted from f16/bf16 when needed). Absent and
  /// `optional`: an absent view.
  tensor_view vector_f32(const std::string& name, uint64_t n, bool optional = false) {
    std::optional<found_tensor> ft = lookup_(name);
    if (!ft) {
      if (optional) return tensor_view{name, dtype::f32, 0, 0, nullptr};
      fail(where_, "tensor '" + name + "' is missing");
    }
    found_tensor& t = *ft;
    check_shape(t, name, {n});
    if (is_block_dtype(t.type))
      fail(t.file, "tensor '" + name + "': type " + std::string(dtype_name(t.type)) +
                       ", expected f32, f16 or bf16");
    // Always a copy, read with pread rather than through the mapping: reading a few KiB of
    // the mapping maps the page-cache folio around them (2-4 MiB on recent kernels), which
    // would keep ~30 MB of a 125M model's file resident for its norms alone.
    const size_t elem = t.type == dtype::f32 ? 4 : 2;
    std::vector<std::byte> raw(n * elem);
    if (!read_file_bytes(t.file, t.offset, raw.data(), raw.size()))
      std::memcpy(raw.data(), t.data, raw.size());
    auto copy = std::make_shared<std::vector<float>>(n);
    for (uint64_t i = 0; i < n; ++i) {
      if (t.type == dtype::f32) {
        std::memcpy(&(*copy)[i], raw.data() + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        (*copy)[i] = t.type == dtype::f16 ? half_to_float(h) : bf16_to_float(h);
      }
    }
    tensor_view v{name, dtype::f32, 1, n, reinterpret_cast<const std::byte*>(copy->data())};
    m_.storage.push_back(copy);
    return v;
  }

 private:
  found_tensor require(const std::string& name) {
    std::optional<found_tensor> t = lookup_(name);
    if (!t) fail(where_, "tensor '" + name + "' is missing");
    return std::move(*t);
  }

  void check_shape(const found_tensor& t, const std::string& name,
                   const std::vector<uint64_t>& want) {
    if (t.shape != want)
      fail(t.file, "tensor '" + name + "': shape " + shape_text(t.shape) + ", expected " +
                       shape_text(want));
  }

  std::string where_;
  bool innermost_first_;
  std::function<std::optional<found_tensor>(const std::string&)> lookup_;
  loaded_model& m_;
};

/// Tensor names of one format.
struct tensor_names {
  std::string tok_embd, out_norm, output;
  std::function<std::string(uint32_t layer, std::string_view part)> layer;
};

/// Every weight of the model, checked against `m.config`.
void bind_weights(weight_binder& b, const tensor_names& names, loaded_model& m) {
  const llama_config& c = m.config;
  const uint64_t q_rows = uint64_t{c.heads} * c.head_dim;
  const uint64_t kv_rows = uint64_t{c.kv_heads} * c.head_dim;
  model_weights& w = m.weights;
  w.tok_embd = b.matrix(names.tok_embd, c.vocab, c.dim);
  w.layers.clear();
  for (uint32_t l = 0; l < c.layers; ++l) {
    auto n = [&](std::string_view part) { return names.layer(l, part); };
    layer_weights lw;
    lw.attn_norm = b.vector_f32(n("attn_norm"), c.dim);
    lw.wq = b.matrix(n("wq"), q_rows, c.dim);
    lw.wk = b.matrix(n("wk"), kv_rows, c.dim);
    lw.wv = b.matrix(n("wv"), kv_rows, c.dim);
    lw.wo = b.matrix(n("wo"), c.dim, q_rows);
    if (c.qkv_bias) {
      lw.bq = b.vector_f32(n("bq"), q_rows);
      lw.bk = b.vector_f32(n("bk"), kv_rows);
      lw.bv = b.vector_f32(n("bv"), kv_rows);
    }
    lw.ffn_norm = b.vector_f32(n("ffn_norm"), c.dim);
    lw.w_gate = b.matrix(n("gate"), c.ffn, c.dim);
    lw.w_up = b.matrix(n("up"), c.ffn, c.dim);
    lw.w_down = b.matrix(n("down"), c.dim, c.ffn);
    w.layers.push_back(std::move(lw));
  }
  w.out_norm = b.vector_f32(names.out_norm, c.dim);
  if (c.tied_output)
    w.output = w.tok_embd;
  else
    w.output = b.matrix(names.output, c.vocab, c.dim);
}

void check_config(const std::string& where, const llama_config& c) {
  if (auto r = c.validate(); !r) fail(where, r.error().message);
}

// ---------------------------------------------------------------------------------------
// GGUF

/// "llama-bpe" -> "llama3" and friends: llama.cpp's pre-tokenizer names to vocab_spec's.
std::string normalise_pre(const std::string& pre) {
  if (pre == "llama-bpe" || pre == "llama3") return "llama3";
  if (pre == "default" || pre.empty()) return "gpt2";
  return pre;
}

vocab_spec gguf_vocab(const gguf_file& f) {
  vocab_spec spec;
  std::string model = unwrap(f.get_string("tokenizer.ggml.model"));
  if (model == "llama")
    spec.model = vocab_spec::model_kind::spm;
  else if (model == "gpt2")
    spec.model = vocab_spec::model_kind::bpe;
  else
    fail(f.path(),
         "metadata key 'tokenizer.ggml.model' is '" + model + "' (supported: 'llama', 'gpt2')");
  const bool spm = spec.model == vocab_spec::model_kind::spm;
  spec.tokens = unwrap(f.get_strings("tokenizer.ggml.tokens"));
  const size_t n = spec.tokens.size();
  if (n == 0) fail(f.path(), "metadata key 'tokenizer.ggml.tokens' is empty");
  spec.scores = unwrap(f.get_f32s("tokenizer.ggml.scores", true));
  if (!spec.scores.empty() && spec.scores.size() != n)
    fail(f.path(), "metadata key 'tokenizer.ggml.scores' has " +
                       std::to_string(spec.scores.size()) + " entries for " + std::to_string(n) +
                       " tokens");
  std::vector<int32_t> types = unwrap(f.get_i32s("tokenizer.ggml.token_type", true));
  if (!types.empty() && types.size() != n)
    fail(f.path(), "metadata key 'tokenizer.ggml.token_type' has " + std::to_string(types.size()) +
                       " entries for " + std::to_string(n) + " tokens");
  spec.kinds.reserve(types.size());
  for (int32_t t : types)
    spec.kinds.push_back(static_cast<token_kind>(t));
  spec.merges = unwrap(f.get_strings("tokenizer.ggml.merges", true));
  auto id = [&](const char* key) {
    // Some writers store "none" (-1) as u32 0xFFFFFFFF.
    if (const gguf_value* raw = f.find(key); raw && raw->as_uint() == UINT32_MAX) return -1;
    int32_t v = unwrap(f.get_i32(key, -1));
    if (v < -1 || (v >= 0 && static_cast<size_t>(v) >= n))
      fail(f.path(), "metadata key '" + std::string(key) + "' is " + std::to_string(v) +
                         ", outside the vocabulary of " + std::to_string(n));
    return v;
  };
  spec.bos = id("tokenizer.ggml.bos_token_id");
  spec.eos = id("tokenizer.ggml.eos_token_id");
  spec.unk = id("tokenizer.ggml.unknown_token_id");
  spec.add_bos = unwrap(f.get_bool("tokenizer.ggml.add_bos_token", spm));
  spec.add_space_prefix = unwrap(f.get_bool("tokenizer.ggml.add_space_prefix", spm));
  spec.pre = normalise_pre(unwrap(f.get_string("tokenizer.ggml.pre", std::string("gpt2"))));
  spec.chat_template = unwrap(f.get_string("tokenizer.chat_template", std::string()));
  return spec;
}

/// Points the matrices the forward pass streams (embedding, output head, every linear
/// layer) that lie in `map` at a huge-page copy of it instead, filled in the background
/// (engines wait for it: loaded_model::wait_for_weights). Norms, biases and RoPE divisors
/// are owned f32 copies already (weight_binder::vector_f32): engines read them while they
/// are built, before the copy is filled.
void use_huge_copy(loaded_model& m, const std::shared_ptr<const mapped_file>& map,
                   const std::string& path) {
  auto copy = unwrap(huge_copy::start(path, map));
  const std::byte* begin = map->data();
  const std::byte* end = begin + map->size();
  auto move = [&](tensor_view& v) {
    if (v.data >= begin && v.data < end) v.data = copy->data() + (v.data - begin);
  };
  auto& w = m.weights;
  for (auto* v : {&w.tok_embd, &w.output})
    move(*v);
  for (auto& l : w.layers)
    for (auto* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      move(*v);
  m.weight_copies.push_back(std::move(copy));
}

void load_gguf(const std::string& path, loaded_model& m, bool huge_copy) {
  gguf_file f = unwrap(gguf_file::open(path));
  m.format = "gguf";
  m.storage.push_back(f.mapping());
  llama_config& c = m.config;

  c.arch = unwrap(f.get_string("general.architecture"));
  if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2")
    fail(path, "metadata key 'general.architecture' is '" + c.arch +
                   "' (supported: llama, mistral, qwen2)");
  const std::string a = c.arch + ".";
  c.name = unwrap(f.get_string("general.name", fs::path(path).stem().string()));
  c.dim = unwrap(f.get_u32(a + "embedding_length"));
  c.layers = unwrap(f.get_u32(a + "block_count"));
  c.ffn = unwrap(f.get_u32(a + "feed_forward_length"));
  c.heads = unwrap(f.get_u32(a + "attention.head_count"));
  c.kv_heads = unwrap(f.get_u32(a + "attention.head_count_kv", c.heads));
  c.max_context = unwrap(f.get_u32(a + "context_length"));
  c.rope_theta = unwrap(f.get_f32(a + "rope.freq_base", 10000.0f));
  c.rms_eps = unwrap(f.get_f32(a + "attention.layer_norm_rms_epsilon"));
  if (c.heads == 0) fail(path, "metadata key '" + a + "attention.head_count' is 0");
  const uint32_t rot = unwrap(f.get_u32(a + "rope.dimension_count", c.dim / c.heads));
  c.head_dim = unwrap(f.get_u32(a + "attention.key_length", rot));
  if (rot != c.head_dim)
    fail(path, "metadata key '" + a + "rope.dimension_count' is " + std::to_string(rot) +
                   ", but heads are " + std::to_string(c.head_dim) +
                   " wide (partial rotary embeddings are not supported)");
  const uint32_t v_len = unwrap(f.get_u32(a + "attention.value_length", c.head_dim));
  if (v_len != c.head_dim)
    fail(path, "metadata key '" + a + "attention.value_length' is " + std::to_string(v_len) +
                   ", expected " + std::to_string(c.head_dim));
  c.rope = c.arch == "qwen2" ? rope_style::halves : rope_style::adjacent;

  const std::string scaling = unwrap(f.get_string(a + "rope.scaling.type", std::string("none")));
  if (scaling == "linear") {
    c.scaling.type = rope_scaling::kind::linear;
    c.scaling.factor = unwrap(f.get_f32(a + "rope.scaling.factor"));
  } else if (scaling != "none") {
    fail(path, "metadata key '" + a + "rope.scaling.type' is '" + scaling +
                   "' (supported: none, linear)");
  }

  vocab_spec spec = gguf_vocab(f);
  c.vocab = unwrap(f.get_u32(a + "vocab_size", static_cast<uint32_t>(spec.tokens.size())));
  if (spec.tokens.size() > c.vocab)
    fail(path, "the tokenizer has " + std::to_string(spec.tokens.size()) +
                   " tokens, more than the model's vocabulary of " + std::to_string(c.vocab));
  c.bos = spec.bos;
  c.eos = spec.eos;
  c.add_bos = spec.add_bos && spec.bos >= 0;
  c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.tied_output = f.find_tensor("output.weight") == nullptr;
  check_config(path, c);

  weight_binder b(
      path, true,
      [&f](const std::string& name) -> std::optional<found_tensor> {
        const gguf_tensor_info* t = f.find_tensor(name);
        if (!t) return std::nullopt;
        return found_tensor{f.path(), t->ne, t->type, t->data,
                            static_cast<uint64_t>(t->data - f.mapping()->data())};
      },
      m);
  tensor_names names;
  names.tok_embd = "token_embd.weight";
  names.out_norm = "output_norm.weight";
  names.output = "output.weight";
  names.layer = [](uint32_t l, std::string_view part) {
    static const std::map<std::string_view, std::string_view> parts = {
        {"attn_norm", "attn_norm.weight"},
        {"wq", "attn_q.weight"},
        {"wk", "attn_k.weight"},
        {"wv", "attn_v.weight"},
        {"wo", "attn_output.weight"},
        {"bq", "attn_q.bias"},
        {"bk", "attn_k.bias"},
        {"bv", "attn_v.bias"},
        {"ffn_norm", "ffn_norm.weight"},
        {"gate", "ffn_gate.weight"},
        {"up", "ffn_up.weight"},
        {"down", "ffn_down.weight"}};
    return "blk." + std::to_string(l) + "." + std::string(parts.at(part));
  };
  bind_weights(b, names, m);
  m.weights.rope_freqs = b.vector_f32("rope_freqs.weight", c.head_dim / 2, true);

  m.chat_template = spec.chat_template;
  m.tok = unwrap(make_text_tokenizer(spec));
  // Nothing the process keeps points into the header it parsed: no page of the file stays
  // resident until a forward pass reads a matrix (none at all with the huge-page copy).
  f.mapping()->release_pages();
  if (huge_copy) use_huge_copy(m, f.mapping(), path);
}

// ---------------------------------------------------------------------------------------
// Hugging Face directory

/// Reads keys of config.json with errors naming the key.
class json_config {
 public:
  json_config(std::string file, const json& j) : file_(std::move(file)), j_(j) {}

  /// The value under `key`; nullptr when absent or null.
  const json* find(const std::string& key) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  uint32_t u32(const std::string& key, std::optional<uint32_t> fallback = {}) const {
    const json* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      missing(key);
    }
    if (!v->is_number_integer()) wrong(key, *v, "an integer");
    if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      if (u <= UINT32_MAX) return static_cast<uint32_t>(u);
    }
    fail(file_, "key '" + key + "' is " + v->dump() + ", out of range");
  }

  float f32(const std::string& key, std::optional<float> fallback = {}) const {
    const json* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      missing(key);
    }
    if (!v->is_number()) wrong(key, *v, "a number");
    return v->get<float>();
  }

  bool boolean(const std::string& key, bool fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean()) wrong(key, *v, "a boolean");
    return v->get<bool>();
  }

  /// A token id, or the first of a list of them; -1 when absent.
  token_id token(const std::string& key) const {
    const json* v = find(key);
    if (!v) return -1;
    const json* x = v;
    if (v->is_array()) {
      if (v->empty()) return -1;
      x = &(*v)[0];
    }
    if (!x->is_number_unsigned() || x->get<uint64_t>() > INT32_MAX)
      wrong(key, *v, "a token id or a list of them");
    return static_cast<token_id>(x->get<uint64_t>());
  }

  [[noreturn]] void missing(const std::string& key) const {
    fail(file_, "key '" + key + "' is missing");
  }
  [[noreturn]] void wrong(const std::string& key, const json& v, const std::string& want) const {
    fail(file_, "key '" + key + "' is a JSON " + std::string(v.type_name()) + " (" +
                    v.dump().substr(0, 40) + "), expected " + want);
  }

 private:
  std::string file_;
  const json& j_;
};

void read_hf_config(const std::string& dir, llama_config& c) {
  const std::string file = (fs::path(dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) fail(dir, "config.json is missing");
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, "cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(file, "not valid JSON");
  if (!j.is_object()) fail(file, "not a JSON object");
  json_config k(file, j);

  const json* archs = k.find("architectures");
  if (!archs) k.missing("architectures");
  if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string())
    k.wrong("architectures", *archs, "a list of class names");
  const std::string arch = (*archs)[0].get<std::string>();
  if (arch == "LlamaForCausalLM")
    c.arch = "llama";
  else if (arch == "MistralForCausalLM")
    c.arch = "mistral";
  else if (arch == "Qwen2ForCausalLM")
    c.arch = "qwen2";
  else
    fail(file, "key 'architectures' names '" + arch +
                   "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");

  c.name = fs::path(dir).lexically_normal().filename().string();
  if (c.name.empty()) c.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  c.dim = k.u32("hidden_size");
  c.layers = k.u32("num_hidden_layers");
  c.heads = k.u32("num_attention_heads");
  c.kv_heads = k.u32("num_key_value_heads", c.heads);
  c.ffn = k.u32("intermediate_size");
  c.vocab = k.u32("vocab_size");
  c.max_context = k.u32("max_position_embeddings");
  c.rope_theta = k.f32("rope_theta", 10000.0f);
  c.rms_eps = k.f32("rms_norm_eps", 1e-6f);
  c.tied_output = k.boolean("tie_word_embeddings", false);
  if (c.heads == 0) fail(file, "key 'num_attention_heads' is 0");
  c.head_dim = k.u32("head_dim", c.dim / c.heads);
  c.qkv_bias = c.arch == "qwen2" ? true : k.boolean("attention_bias", false);
  if (k.boolean("mlp_bias", false)) fail(file, "key 'mlp_bias' is true (not supported)");
  c.rope = rope_style::halves;
  c.bos = k.token("bos_token_id");
  c.eos = k.token("eos_token_id");

  if (const json* rs = k.find("rope_scaling")) {
    if (!rs->is_object()) k.wrong("rope_scaling", *rs, "an object");
    json_config s(file + " (rope_scaling)", *rs);
    const json* t = s.find("rope_type");
    if (!t) t = s.find("type");
    if (!t) s.missing("rope_type");
    if (!t->is_string()) s.wrong("rope_type", *t, "a string");
    const std::string type = t->get<std::string>();
    if (type == "llama3") {
      c.scaling.type = rope_scaling::kind::llama3;
      c.scaling.factor = s.f32("factor");
      c.scaling.low_freq_factor = s.f32("low_freq_factor", 1.0f);
      c.scaling.high_freq_factor = s.f32("high_freq_factor", 4.0f);
      c.scaling.original_max_context = s.u32("original_max_position_embeddings", 8192);
    } else if (type == "linear") {
      c.scaling.type = rope_scaling::kind::linear;
      c.scaling.factor = s.f32("factor");
    } else if (type != "default") {
      fail(file, "key 'rope_scaling.rope_type' is '" + type + "' (supported: llama3, linear)");
    }
  }
}

void load_hf(const std::string& dir, loaded_model& m, bool huge_copy) {
  m.format = "hf";
  llama_config& c = m.config;
  read_hf_config(dir, c);

  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  }
  if (ec) fail(dir, "cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  if (files.empty()) fail(dir, "no *.safetensors files");

  auto st = std::make_shared<std::vector<safetensors_file>>();
  st->reserve(files.size());
  std::map<std::string, std::pair<size_t, const safetensors_tensor*>, std::less<>> index;
  for (const auto& file : files) {
    st->push_back(unwrap(safetensors_file::open(file)));
    const safetensors_file& sf = st->back();
    m.storage.push_back(sf.mapping());
    for (const auto& t : sf.tensors()) {
      auto [it, fresh] = index.emplace(t.name, std::make_pair(st->size() - 1, &t));
      if (!fresh)
        fail(dir, "tensor '" + t.name + "' appears in both " +
                      fs::path((*st)[it->second.first].path()).filename().string() + " and " +
                      fs::path(file).filename().string());
    }
  }

  auto lookup = [&](const std::string& name) -> std::optional<found_tensor> {
    auto it = index.find(name);
    if (it == index.end()) return std::nullopt;
    const safetensors_tensor* t = it->second.second;
    const auto& file = (*st)[it->second.first];
    return found_tensor{file.path(), t->shape, t->type, t->data,
                        static_cast<uint64_t>(t->data - file.mapping()->data())};
  };

  if (!c.tied_output && !lookup("lm_head.weight")) c.tied_output = true;
  if (lookup("model.layers.0.self_attn.o_proj.bias"))
    fail(dir,
         "tensor 'model.layers.0.self_attn.o_proj.bias': output projection biases are "
         "not supported");

  const std::string tok_file = (fs::path(dir) / "tokenizer.json").string();
  if (!fs::is_regular_file(tok_file, ec)) fail(dir, "tokenizer.json is missing");
  vocab_spec spec = unwrap(read_tokenizer_json(tok_file));
  if (spec.bos < 0) spec.bos = c.bos;
  if (spec.eos < 0) spec.eos = c.eos;
  if (c.bos < 0) c.bos = spec.bos;
  if (c.eos < 0) c.eos = spec.eos;
  c.add_bos = spec.add_bos && c.bos >= 0;
  if (spec.tokens.size() > c.vocab)
    fail(tok_file, "the tokenizer has " + std::to_string(spec.tokens.size()) +
                       " tokens, more than the model's vocab_size of " + std::to_string(c.vocab));
  check_config(dir, c);

  weight_binder b(dir, false, lookup, m);
  tensor_names names;
  names.tok_embd = "model.embed_tokens.weight";
  names.out_norm = "model.norm.weight";
  names.output = "lm_head.weight";
  names.layer = [](uint32_t l, std::string_view part) {
    static const std::map<std::string_view, std::string_view> parts = {
        {"attn_norm", "input_layernorm.weight"},
        {"wq", "self_attn.q_proj.weight"},
        {"wk", "self_attn.k_proj.weight"},
        {"wv", "self_attn.v_proj.weight"},
        {"wo", "self_attn.o_proj.weight"},
        {"bq", "self_attn.q_proj.bias"},
        {"bk", "self_attn.k_proj.bias"},
        {"bv", "self_attn.v_proj.bias"},
        {"ffn_norm", "post_attention_layernorm.weight"},
        {"gate", "mlp.gate_proj.weight"},
        {"up", "mlp.up_proj.weight"},
        {"down", "mlp.down_proj.weight"}};
    return "model.layers." + std::to_string(l) + "." + std::string(parts.at(part));
  };
  bind_weights(b, names, m);

  m.chat_template = spec.chat_template;
  m.tok = unwrap(make_text_tokenizer(spec));
  for (const auto& sf : *st) {
    sf.mapping()->release_pages();  // the headers parsed (as for GGUF)
    if (huge_copy) use_huge_copy(m, sf.mapping(), sf.path());
  }
}

}  // namespace

result<void> check_weights(const loaded_model& m) {
  auto bad = [](std::string what) { return error_info{errc::invalid_model, std::move(what)}; };
  const llama_config& c = m.config;
  const auto& w = m.weights;
  if (w.layers.size() != c.layers)
    return bad(fmt::format("{} layer weight sets for {} layers", w.layers.size(), c.layers));
  auto shape = [](const tensor_view& t, const char* what, uint64_t rows,
                  uint64_t cols) -> std::string {
    if (!t.present()) return fmt::format("tensor {} is missing", what);
    if (t.rows != rows || t.cols != cols)
      return fmt::format("tensor {} ('{}') is [{}, {}], expected [{}, {}]", what, t.name, t.rows,
                         t.cols, rows, cols);
    if (cols % block_elems(t.type) != 0)
      return fmt::format("{} tensor {} ('{}') has {} columns, not a multiple of its block size {}",
                         dtype_name(t.type), what, t.name, cols, block_elems(t.type));
    return {};
  };
  const uint64_t qdim = uint64_t{c.heads} * c.head_dim, kvdim = uint64_t{c.kv_heads} * c.head_dim;
  for (auto err :
       {shape(w.tok_embd, "tok_embd", c.vocab, c.dim), shape(w.out_norm, "out_norm", 1, c.dim),
        shape(w.output, "output", c.vocab, c.dim)})
    if (!err.empty()) return bad(err);
  if (w.rope_freqs.present() && w.rope_freqs.rows * w.rope_freqs.cols != c.head_dim / 2)
    return bad(fmt::format("rope_freqs has {} values, expected {}",
                           w.rope_freqs.rows * w.rope_freqs.cols, c.head_dim / 2));
  for (const auto& lw : w.layers) {
    for (auto err :
         {shape(lw.attn_norm, "attn_norm", 1, c.dim), shape(lw.ffn_norm, "ffn_norm", 1, c.dim),
          shape(lw.wq, "wq", qdim, c.dim), shape(lw.wk, "wk", kvdim, c.dim),
          shape(lw.wv, "wv", kvdim, c.dim), shape(lw.wo, "wo", c.dim, qdim),
          shape(lw.w_gate, "w_gate", c.ffn, c.dim), shape(lw.w_up, "w_up", c.ffn, c.dim),
          shape(lw.w_down, "w_down", c.dim, c.ffn)})
      if (!err.empty()) return bad(err);
    if (c.qkv_bias)
      for (auto err : {shape(lw.bq, "bq", 1, qdim), shape(lw.bk, "bk", 1, kvdim),
                       shape(lw.bv, "bv", 1, kvdim)})
        if (!err.empty()) return bad(err);
  }
  return {};
}

result<std::shared_ptr<const loaded_model>> load_model(const std::string& path,
                                                       bool weights_huge_copy) {
  try {
    auto m = std::make_shared<loaded_model>();
    m->path = path;
    std::error_code ec;
    if (fs::is_directory(path, ec))
      load_hf(path, *m, weights_huge_copy);
    else if (fs::exists(path, ec))
      load_gguf(path, *m, weights_huge_copy);
    else
      return model_error(path, "no such file or directory");
    return std::shared_ptr<const loaded_model>(std::move(m));
  } catch (const load_error& e) {
    return e.err;
  } catch (const std::bad_alloc&) {
    return model_error(path, "out of memory while loading");
  } catch (const std::exception& e) {
    return model_error(path, e.what());
  } catch (...) {
    return model_error(path, "unexpected error while loading");
  }
}

}  // namespace tokenmill
