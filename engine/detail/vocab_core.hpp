#pragma once
/// Internals the text tokenizers (spm, bpe) and the tokenizer.json reader/writer share:
/// the three pre-tokenizer patterns, UTF-8 and GPT-2 byte-alphabet helpers, `<0xNN>` byte
/// tokens, and `vocab_core` (the validated vocabulary with its lookup map and specials).
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/ids.hpp"
#include "common/result.hpp"
#include "engine/text_tokenizer.hpp"

namespace tokenmill::detail {

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's stand-in for a space.
inline constexpr std::string_view space_marker = "\xE2\x96\x81";

/// The three pre-tokenizer patterns, as Hugging Face's tokenizer.json spells them.
inline constexpr std::string_view gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view llama3_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view qwen2_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

/// An error_info{errc::invalid_model, msg}: every malformed vocabulary reports this code.
error_info invalid(std::string msg);

/// The canonical name ("gpt2", "llama3", "qwen2") of a pre-tokenizer name; "" if unknown.
std::string canonical_pre(std::string_view name);

/// The regex of a canonical pre-tokenizer name (gpt2's for anything else).
std::string_view pattern_of(std::string_view canonical);

/// Heterogeneous lookup: find a std::string key by string_view without allocating.
struct sv_hash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
/// Token text -> id.
using piece_map = std::unordered_map<std::string, token_id, sv_hash, std::equal_to<>>;

/// Appends code point `cp` to `out` as UTF-8.
void append_utf8(std::string& out, uint32_t cp);

/// Decodes one well-formed UTF-8 character at `i` (advancing `i`); false (and `i`
/// unchanged) when the bytes there are not one.
bool next_utf8(std::string_view s, size_t& i, uint32_t& cp);

/// GPT-2's reversible byte -> printable code point alphabet: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
struct byte_alphabet {
  std::array<std::string, 256> utf8;              ///< byte -> its character, UTF-8
  std::unordered_map<uint32_t, uint8_t> to_byte;  ///< code point -> byte
};

/// The one GPT-2 byte alphabet, built on first use.
const byte_alphabet& gpt2_bytes();

/// "<0xNN>" -> NN; -1 if `s` is not such a token.
int parse_byte_token(std::string_view s);

/// NN -> "<0xNN>" (upper-case hex).
std::string byte_token_text(unsigned b);

/// What both tokenizers share: the vocabulary, its lookup map, the special tokens that are
/// split out of the text before tokenizing and the decoded piece of every id.
struct vocab_core {
  std::vector<std::string> tokens;
  std::vector<token_kind> kinds;    ///< always tokens.size() entries
  piece_map ids;                    ///< text -> id; the last id wins for duplicate texts
  std::vector<token_id> specials;   ///< control/user-defined/unknown ids, longest text first
  std::vector<std::string> pieces;  ///< id -> raw bytes (piece())
  token_id bos = -1;

  /// A span of the input: raw text (id < 0) or a special token written literally.
  struct fragment {
    size_t off = 0;
    size_t len = 0;
    token_id id = -1;
  };

  /// Validates the parts of `spec` both kinds share and fills everything but `pieces`.
  /// Errors (errc::invalid_model) say which size or id is wrong.
  result<void> init(const vocab_spec& spec);

  /// Splits `text` around literal special tokens, longest tokens first (as llama.cpp does).
  std::vector<fragment> split(std::string_view text) const;

  /// The raw bytes of token `id` ("" for an id out of range): tokenizer::piece.
  std::string piece(token_id id) const {
    if (id < 0 || static_cast<size_t>(id) >= pieces.size()) return {};
    return pieces[static_cast<size_t>(id)];
  }

  /// Ids in the vocabulary: tokenizer::vocab_size.
  uint32_t size() const { return static_cast<uint32_t>(tokens.size()); }

  /// The id of token text `s`, -1 if it is none.
  token_id lookup(std::string_view s) const {
    auto it = ids.find(s);
    return it == ids.end() ? -1 : it->second;
  }
};

/// The SentencePiece-style tokenizer over `spec` (make_text_tokenizer's spm half).
result<std::shared_ptr<const tokenizer>> make_spm_tokenizer(const vocab_spec& spec);

/// The byte-level BPE tokenizer over `spec` (make_text_tokenizer's bpe half).
result<std::shared_ptr<const tokenizer>> make_bpe_tokenizer(const vocab_spec& spec);

}  // namespace tokenmill::detail
