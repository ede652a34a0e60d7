#pragma once
/// Regular expressions compiled to a byte-level DFA, for constrained decoding. The subset
/// is the one JSON schemas and users need: literals, `.`, classes `[a-z]` `[^"\\]` with
/// escapes (\d \w \s \D \W \S \n \t \r \f \v \xHH \uHHHH and escaped punctuation), groups
/// `(…)` `(?:…)`, alternation `|` and the quantifiers `* + ? {m} {m,} {m,n}`. A pattern
/// always matches the whole text (a leading `^` and trailing `$` are accepted and change
/// nothing). Anything else (backreferences, lookaround, lazy quantifiers, \b) is refused
/// with an error naming it and its offset.
///
/// Matching is over UTF-8 bytes: `.` and negated classes match one whole UTF-8 character
/// (1 to 4 bytes), so the text they allow is valid UTF-8; a class may list non-ASCII
/// characters but not non-ASCII ranges.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace tokenmill::grammar {

/// A deterministic automaton over bytes, with only live states: every state can still
/// reach an accepting one, so a step to `dead` means the text can no longer match.
/// Bytes that behave alike share a class, which keeps the table small.
struct dfa {
  static constexpr int32_t dead = -1;
  uint8_t byte_class[256] = {};  ///< byte -> class
  uint32_t classes = 1;          ///< number of byte classes
  std::vector<int32_t> next;     ///< state * classes + class -> state, or dead
  std::vector<uint8_t> accepting;
  int32_t start = 0;

  size_t states() const { return accepting.size(); }
  int32_t step(int32_t state, uint8_t byte) const {
    return next[size_t(state) * classes + byte_class[byte]];
  }
  /// The state after `text` from `state`, or dead.
  int32_t walk(int32_t state, std::string_view text) const;
  /// True when the whole `text` matches.
  bool matches(std::string_view text) const;
  /// True when no byte leads anywhere from `state` (only the end of text is allowed).
  bool final(int32_t state) const;
};

/// Bounds that keep a hostile pattern from costing unbounded time or memory.
struct regex_limits {
  size_t max_pattern_bytes = size_t{1} << 20;
  uint32_t max_repeat = 1000;         ///< largest m or n in {m,n}
  size_t max_nfa_states = 2'000'000;  ///< after expanding {m,n}
  size_t max_dfa_states = 50'000;
};

/// Compiles `pattern`; errc::invalid_request naming what is wrong and the byte offset
/// ("regex: unsupported escape \\b at offset 4"), or saying which limit was passed.
result<dfa> compile_regex(std::string_view pattern, const regex_limits& limits = {});

/// `text` with every regex metacharacter escaped, so that it matches itself literally.
std::string regex_escape(std::string_view text);

}  // namespace tokenmill::grammar
