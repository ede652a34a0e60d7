/// libFuzzer target: loading a Hugging Face model directory (engine/model.hpp load_model:
/// config.json, *.safetensors, tokenizer.json). The input is config.json up to its first NUL
/// byte; what follows the NUL, if anything, is the directory's model.safetensors, else a valid
/// one for the seed configuration (dim 8, 1 layer, 2 heads, 1 KV head, ffn 16, vocab 262).
/// tokenizer.json is fixed (a byte-level BPE of 262 tokens). The directory lives in a private
/// temporary folder, rewritten for every input. A model that loads must pass check_weights or
/// be refused by it with a reason, and every tensor it binds must lie in its file's mapping.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "engine/model.hpp"
#include "engine/safetensors.hpp"
#include "engine/text_tokenizer.hpp"

namespace {

using namespace tokenmill;
namespace fs = std::filesystem;

constexpr uint64_t dim = 8, layers = 1, heads = 2, kv_heads = 1, head_dim = 4, ffn = 16;
constexpr uint64_t vocab = 262;

/// GPT-2's byte-to-symbol alphabet (256 symbols), as a byte-level BPE vocabulary starts.
std::vector<std::string> byte_level_alphabet() {
  std::vector<std::string> out;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    int cp = printable ? b : 256 + extra++;
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

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) std::abort();
}

struct model_dir {
  std::string path;
  std::string weights;  ///< the valid model.safetensors for the seed configuration

  model_dir() {
    const char* base = fs::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string tmpl = std::string(base) + "/tokenmill_fuzz_hf_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    path = tmpl;

    vocab_spec spec;
    spec.model = vocab_spec::model_kind::bpe;
    spec.tokens = byte_level_alphabet();
    spec.tokens.push_back(
        "\xc4\xa0"
        "a");  // "Ġa"
    spec.merges = {"\xc4\xa0 a"};
    spec.tokens.push_back("<|begin|>");
    spec.tokens.push_back("<|end|>");
    spec.tokens.push_back("<|pad|>");
    spec.tokens.push_back("<|pad2|>");
    spec.kinds.assign(spec.tokens.size(), token_kind::normal);
    spec.kinds[257] = token_kind::control;
    spec.kinds[258] = token_kind::control;
    spec.bos = 257;
    spec.eos = 258;
    spec.add_bos = true;
    if (!write_tokenizer_json(spec, path + "/tokenizer.json")) std::abort();

    safetensors_writer w;
    auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
      uint64_t n = 1;
      for (auto d : shape)
        n *= d;
      w.add_tensor(name, dtype::f32, std::move(shape), std::vector<std::byte>(n * 4));
    };
    add("model.embed_tokens.weight", {vocab, dim});
    for (uint64_t l = 0; l < layers; ++l) {
      const std::string b = "model.layers." + std::to_string(l) + ".";
      add(b + "input_layernorm.weight", {dim});
      add(b + "self_attn.q_proj.weight", {heads * head_dim, dim});
      add(b + "self_attn.k_proj.weight", {kv_heads * head_dim, dim});
      add(b + "self_attn.v_proj.weight", {kv_heads * head_dim, dim});
      add(b + "self_attn.o_proj.weight", {dim, heads * head_dim});
      add(b + "post_attention_layernorm.weight", {dim});
      add(b + "mlp.gate_proj.weight", {ffn, dim});
      add(b + "mlp.up_proj.weight", {ffn, dim});
      add(b + "mlp.down_proj.weight", {dim, ffn});
    }
    add("model.norm.weight", {dim});
    add("lm_head.weight", {vocab, dim});
    if (!w.write(path + "/model.safetensors")) std::abort();
    weights = read_all(path + "/model.safetensors");
  }
  ~model_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

/// Touches a bound tensor's first and last byte (ASan reports one reaching past its file).
void touch(const tensor_view& t) {
  if (!t.present() || t.rows == 0 || t.cols == 0) return;
  const size_t bytes = t.rows * row_bytes(t.type, t.cols);
  volatile std::byte first = t.data[0], last = t.data[bytes - 1];
  (void)first;
  (void)last;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static model_dir dir;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto nul = in.find('\0');
  write_all(dir.path + "/config.json", in.substr(0, nul));
  write_all(dir.path + "/model.safetensors",
            nul == std::string_view::npos ? std::string_view(dir.weights) : in.substr(nul + 1));

  auto m = load_model(dir.path);
  if (!m) {
    const auto& msg = m.error().message;
    // Every refusal names the directory or a file in it.
    if (msg.find(dir.path) == std::string::npos) __builtin_trap();
    return 0;
  }
  const loaded_model& lm = **m;
  if (!lm.tok) __builtin_trap();
  if (auto ok = check_weights(lm); !ok) {
    if (ok.error().message.empty()) __builtin_trap();
    return 0;
  }
  const auto& w = lm.weights;
  touch(w.tok_embd);
  touch(w.out_norm);
  touch(w.output);
  for (const auto& l : w.layers)
    for (const tensor_view* t : {&l.attn_norm, &l.ffn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate,
                                 &l.w_up, &l.w_down, &l.bq, &l.bk, &l.bv})
      touch(*t);
  return 0;
}
