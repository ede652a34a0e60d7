#pragma once
/// A Llama-family model as loaded from a file: hyper-parameters, weight views into the
/// mapped file, and its tokenizer. Loading validates everything the forward pass relies on
/// (every tensor present with the right shape and a supported dtype), so engines never see
/// a malformed model.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/ids.hpp"
#include "common/result.hpp"
#include "engine/tensor.hpp"
#include "engine/tokenizer.hpp"
#include "engine/weights_memory.hpp"

namespace tokenmill {

/// How RoPE pairs the dimensions of a head. GGUF `llama` files store Q/K permuted so that
/// adjacent pairs (2i, 2i+1) rotate together (llama.cpp ROPE_TYPE_NORM); Hugging Face
/// checkpoints (and GGUF `qwen2`, ROPE_TYPE_NEOX) rotate dimension i with i + head_dim/2.
enum class rope_style : uint8_t { adjacent, halves };

/// Llama 3.x frequency scaling ("rope_type": "llama3"); `none` leaves frequencies alone.
struct rope_scaling {
  enum class kind : uint8_t { none, linear, llama3 };
  kind type = kind::none;
  float factor = 1;
  float low_freq_factor = 1;
  float high_freq_factor = 4;
  uint32_t original_max_context = 8192;
};

/// Hyper-parameters of a Llama-family decoder (Llama 2/3.x, Mistral, Qwen2, SmolLM, ...).
struct llama_config {
  std::string arch = "llama";  ///< "llama", "mistral", "qwen2" (as the file names it)
  std::string name;            ///< the model's name (file metadata, else the file name)
  uint32_t dim = 0;            ///< embedding width
  uint32_t layers = 0;
  uint32_t heads = 0;     ///< query heads
  uint32_t kv_heads = 0;  ///< key/value heads (GQA: heads % kv_heads == 0)
  uint32_t head_dim = 0;  ///< usually dim / heads
  uint32_t ffn = 0;       ///< SwiGLU hidden width
  uint32_t vocab = 0;     ///< rows of the embedding and output matrices
  uint32_t max_context = 0;
  float rope_theta = 10000;
  rope_style rope = rope_style::adjacent;
  rope_scaling scaling;
  float rms_eps = 1e-5f;
  bool qkv_bias = false;     ///< Qwen2: Q, K and V projections have biases
  bool tied_output = false;  ///< the output head is the token embedding
  token_id bos = 1;
  token_id eos = 2;
  bool add_bos = true;  ///< whether prompts start with BOS by default

  /// Success when the numbers are consistent, else errc::invalid_model saying what is wrong.
  result<void> validate() const;
};

/// Weights of one transformer block. Linear weights are [out][in]; biases and norms are
/// vectors. Biases are absent unless `qkv_bias`.
struct layer_weights {
  tensor_view attn_norm;
  tensor_view wq, wk, wv, wo;
  tensor_view bq, bk, bv;
  tensor_view ffn_norm;
  tensor_view w_gate, w_up, w_down;
};

struct model_weights {
  tensor_view tok_embd;  ///< [vocab][dim]
  std::vector<layer_weights> layers;
  tensor_view out_norm;  ///< [dim]
  tensor_view output;    ///< [vocab][dim]; the same view as tok_embd when tied
  /// GGUF Llama 3.x files: f32 [head_dim / 2] divisors of the RoPE frequencies
  /// (llama.cpp's `rope_freqs.weight`); absent otherwise, when `llama_config::scaling`
  /// (from config.json) says how to scale, if at all.
  tensor_view rope_freqs;
};

/// Everything loaded from one model path. Immutable and shared by all workers of a
/// process (the weights are mapped once).
struct loaded_model {
  std::string path;
  std::string format;  ///< "gguf" or "hf"
  llama_config config;
  model_weights weights;
  std::shared_ptr<const tokenizer> tok;
  std::string chat_template;  ///< the model's Jinja chat template; empty when none
  /// Keeps file mappings (and any converted tensors) alive as long as the views are used.
  std::vector<std::shared_ptr<const void>> storage;
  /// Huge-page copies the big matrices' views point into (load_model's weights_huge_copy),
  /// filled in the background.
  std::vector<std::shared_ptr<const huge_copy>> weight_copies;
  /// Blocks until every weight copy is filled: what reads the big matrices calls it first.
  void wait_for_weights() const {
    for (const auto& c : weight_copies)
      c->wait();
  }
};

/// Success when `m`'s weights have the shapes its config implies — every tensor the forward
/// pass reads present ([out][in] for linear layers, biases when qkv_bias), block-format rows
/// whole blocks (32 or 256 values), rope_freqs of head_dim / 2 values — else what is wrong ("tensor
/// wq
/// ('blk.0.attn_q.weight') is [64, 63], expected [64, 64]", errc::invalid_model). Every
/// engine checks this before it uses a model it did not load itself.
result<void> check_weights(const loaded_model& m);

/// Loads a GGUF v3 file or a Hugging Face directory (config.json, *.safetensors,
/// tokenizer.json). Errors (errc::invalid_model) name the file and the tensor or key at
/// fault: "model.gguf: tensor 'blk.3.attn_q.weight': shape [256, 255], expected [256, 256]".
/// `weights_huge_copy`: the big matrices move to huge-page copies of the files, filled in
/// the background (huge_copy; loaded_model::wait_for_weights; the engines decide with
/// weights_memory.hpp).
result<std::shared_ptr<const loaded_model>> load_model(const std::string& path,
                                                       bool weights_huge_copy = false);

}  // namespace tokenmill
