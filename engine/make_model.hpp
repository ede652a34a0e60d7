#pragma once
/// Deterministic random-weight Llama-family models for tests, benchmarks and the demo
/// (`tokenmill make-model`). Nothing is downloaded: the weights come from a seeded
/// generator and the tokenizer is a byte-level BPE built here. The same model written as
/// GGUF and as a Hugging Face directory gives the same logits for the same token ids.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "engine/model.hpp"
#include "engine/tensor.hpp"
#include "engine/text_tokenizer.hpp"

namespace tokenmill {

/// A named shape.
struct model_preset {
  std::string name;
  std::string description;
  /// The hyper-parameters as the Hugging Face directory states them (rope_style::halves);
  /// a GGUF `llama` file of the same preset loads with rope_style::adjacent instead.
  llama_config config;
};

/// Every preset, smallest first ("tiny" ... "~1B").
const std::vector<model_preset>& model_presets();

/// The preset called `name`, or nullptr.
const model_preset* find_model_preset(std::string_view name);

/// Parameters (elements of every weight tensor, norms and biases included) of a model of
/// shape `c`, untied output head, without GGUF's `rope_freqs` (not a parameter).
uint64_t model_parameter_count(const llama_config& c);

/// Bytes of the weight tensors of a model of shape `c` when its matrices are stored as `t`
/// (norms and biases f32): about the size of the written file, headers left out.
uint64_t model_weight_bytes(const llama_config& c, dtype t);

/// Bytes of weights one decode step reads: every linear weight of every layer plus the
/// output head (not the embedding, of which a step reads one row; not the norms).
uint64_t model_step_weight_bytes(const llama_config& c, dtype t);

/// The byte-level BPE vocabulary make_model writes for a model of `vocab_size` ids:
/// `<unk>` (0), `<s>` (1), `</s>` (2), the 256 GPT-2 byte symbols (3..258, in byte order),
/// then tokens built by merges: a few hundred common English words (with and without the
/// leading "Ġ" space), then deterministic filler merges of letter pieces until the
/// vocabulary has exactly `vocab_size` entries (vocab_size must be >= 259).
vocab_spec make_model_vocab(uint32_t vocab_size);

struct make_model_options {
  std::string preset = "tiny";
  dtype type = dtype::f16;      ///< any dtype for gguf, f32/f16/bf16 for hf (norms stay f32)
  std::string format = "gguf";  ///< "gguf" (one file) or "hf" (a directory)
  uint64_t seed = 1;
  std::string output;  ///< file (gguf) or directory (hf)
};

/// Writes the model. Errors: errc::invalid_request for options it cannot follow (unknown
/// preset, dtype or format, an output path that cannot be written), errc::invalid_model
/// from the writers for content they refuse.
result<void> make_model(const make_model_options& opts);

}  // namespace tokenmill
