#pragma once
/// Real vocabularies: SentencePiece-style (GGUF `llama`: score-ordered bigram merges with
/// byte fallback) and byte-level BPE (GGUF `gpt2`, Hugging Face tokenizer.json `BPE`, with
/// the GPT-2, Llama-3 and Qwen2 pre-tokenizer patterns). Both read the same `vocab_spec`,
/// which the model loader fills from GGUF metadata or tokenizer.json.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/ids.hpp"
#include "common/result.hpp"
#include "engine/tokenizer.hpp"

namespace tokenmill {

/// GGUF `tokenizer.ggml.token_type` values.
enum class token_kind : int32_t {
  normal = 1,
  unknown = 2,
  control = 3,
  user_defined = 4,
  unused = 5,
  byte = 6,
};

/// A vocabulary as the files describe it.
struct vocab_spec {
  enum class model_kind : uint8_t { spm, bpe };
  model_kind model = model_kind::spm;
  std::vector<std::string> tokens;  ///< id -> piece as stored ("▁the", "<0x0A>", "Ġthe")
  std::vector<float> scores;        ///< spm: merge priority per id (may be empty for bpe)
  std::vector<token_kind> kinds;    ///< per id; empty means all normal
  std::vector<std::string> merges;  ///< bpe: "left right", highest priority first
  /// bpe pre-tokenizer: "gpt2" (default), "llama3" (a.k.a. llama-bpe), "qwen2".
  std::string pre = "gpt2";
  token_id bos = -1;  ///< -1: none
  token_id eos = -1;
  token_id unk = -1;
  bool add_bos = true;
  bool add_space_prefix = true;  ///< spm: prepend "▁" to the text (SentencePiece default)
  /// The model's Jinja chat template as stored (GGUF tokenizer.chat_template,
  /// tokenizer_config.json chat_template); empty when the model has none. Not rendered
  /// here: the HTTP frontend recognises the common formats from it.
  std::string chat_template;
};

/// A tokenizer over `spec`, immutable and safe to share between threads. Control,
/// user-defined and unknown tokens written literally in the text ("</s>", "<|eot_id|>") are
/// split out first (longest first, as llama.cpp with parse_special) and encode as those
/// tokens; the text between them is tokenized fragment by fragment.
///
/// spm: each fragment that starts the text or follows a special token gets the space prefix
/// (when `add_space_prefix`), spaces become "▁", then adjacent symbols merge by highest
/// score (ties: leftmost); a symbol that is no token falls back to its `<0xNN>` byte
/// tokens, and to `unk` where a byte token is missing (dropped if there is no `unk` either).
/// bpe: the `pre` pattern (PCRE2, Unicode properties) splits each fragment into words; a
/// word's bytes map to the GPT-2 alphabet and merge by rank (lowest first, ties leftmost).
/// "llama3" also takes a word that is itself a token whole (tokenizer.json ignore_merges).
/// `pre` accepts "gpt2" (also "gpt-2", ""), "llama3" (also "llama-bpe") and "qwen2".
///
/// Any byte string encodes, invalid UTF-8 included (such bytes become byte tokens, so the
/// pieces give the input back), in O(n log n) time. `piece()`: the raw bytes of a token
/// ("▁" -> " ", `<0xNN>` -> the byte, GPT-2 alphabet -> bytes); user-defined tokens give
/// their text; control, unknown and unused tokens give "" (so does an id out of range).
///
/// Errors (errc::invalid_model) say which token or merge is malformed: empty vocabulary,
/// scores/kinds of the wrong size (spm needs a score per token), bos/eos/unk out of range,
/// a byte-kind token that is not `<0xNN>`, a merge that is not "left right" with both
/// parts and their concatenation in the vocabulary, a byte-level vocabulary missing one of
/// the 256 byte characters, an unknown `pre`.
result<std::shared_ptr<const tokenizer>> make_text_tokenizer(const vocab_spec& spec);

/// Reads a Hugging Face tokenizer.json (model type BPE; byte-level or SentencePiece-style
/// with byte fallback) with its added tokens ("special": true -> control, else
/// user-defined). Merges may be "a b" strings or ["a", "b"] pairs.
///
/// Byte-level: the normalizer must be null or NFC (accepted but not applied, as in
/// llama.cpp), the pre_tokenizer ByteLevel (use_regex, no prefix space) or a
/// Sequence of one Split with the GPT-2, Llama-3 or Qwen2 regex and a ByteLevel; `pre` is
/// set to "gpt2", "llama3" or "qwen2". Any other pattern or pre-tokenizer is an error that
/// names it. SentencePiece-style (model.byte_fallback with a Metaspace or Replace("▁")
/// decoder, as Llama 2 and Mistral ship): returned as model_kind::spm with scores from the
/// merge order (the first merge producing a token scores highest), `<0xNN>` tokens as byte
/// tokens, add_space_prefix from a Prepend("▁") normalizer or a Metaspace pre-tokenizer.
///
/// BOS/EOS and add_bos come from a tokenizer_config.json beside it when present
/// (bos_token/eos_token as a string or {"content": ...}, add_bos_token), else BOS from a
/// TemplateProcessing post-processor that starts with a special token, else -1 (and
/// add_bos false). Errors (errc::invalid_model) name the file and the key.
result<vocab_spec> read_tokenizer_json(const std::string& path);

/// Writes `spec` (a byte-level BPE vocabulary) as a tokenizer.json that
/// read_tokenizer_json, and Hugging Face's `tokenizers`, read back to the same vocabulary,
/// plus tokenizer_config.json (bos_token, eos_token, add_bos_token) in the same folder.
/// Control/unknown tokens become special added tokens, user-defined ones non-special;
/// unused tokens with empty text are left out. The spec is validated first
/// (make_text_tokenizer). Errors: errc::invalid_model naming the token or merge that
/// cannot be written, errc::invalid_request naming the file that cannot be written.
result<void> write_tokenizer_json(const vocab_spec& spec, const std::string& path);

}  // namespace tokenmill
