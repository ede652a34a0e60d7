/// make_model_vocab (declared in engine/make_model.hpp): the byte-level BPE vocabulary of
/// make-model's random-weight models, common English words first, then filler merges.
#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/detail/splitmix.hpp"
#include "engine/detail/vocab_core.hpp"
#include "engine/make_model.hpp"

namespace tokenmill {
namespace {

using detail::splitmix64;

/// Common English words, most frequent first; make_model_vocab turns them into tokens.
constexpr const char* common_words[] = {
    "the",      "of",         "and",         "to",         "in",        "a",         "is",
    "that",     "for",        "it",          "as",         "was",       "with",      "be",
    "by",       "on",         "not",         "he",         "I",         "this",      "are",
    "or",       "his",        "from",        "at",         "which",     "but",       "have",
    "an",       "had",        "they",        "you",        "were",      "their",     "one",
    "all",      "we",         "can",         "her",        "has",       "there",     "been",
    "if",       "more",       "when",        "will",       "would",     "who",       "so",
    "no",       "she",        "other",       "its",        "may",       "these",     "what",
    "them",     "than",       "some",        "him",        "time",      "into",      "only",
    "do",       "could",      "new",         "about",      "two",       "then",      "any",
    "first",    "my",         "also",        "should",     "like",      "our",       "out",
    "up",       "over",       "now",         "such",       "made",      "way",       "many",
    "most",     "after",      "even",        "where",      "very",      "did",       "your",
    "just",     "those",      "people",      "how",        "because",   "through",   "each",
    "much",     "before",     "same",        "well",       "world",     "must",      "good",
    "years",    "make",       "work",        "long",       "between",   "life",      "both",
    "under",    "never",      "day",         "own",        "us",        "while",     "know",
    "here",     "last",       "might",       "great",      "old",       "year",      "off",
    "come",     "since",      "against",     "go",         "came",      "right",     "used",
    "take",     "three",      "state",       "place",      "small",     "again",     "found",
    "still",    "house",      "part",        "back",       "few",       "general",   "high",
    "system",   "every",      "water",       "another",    "being",     "without",   "school",
    "down",     "think",      "little",      "need",       "number",    "why",       "things",
    "help",     "world",      "point",       "home",       "hand",      "end",       "said",
    "see",      "use",        "her",         "get",        "look",      "want",      "give",
    "going",    "name",       "city",        "country",    "family",    "group",     "story",
    "thing",    "question",   "problem",     "power",      "money",     "night",     "area",
    "book",     "word",       "business",    "government", "company",   "child",     "children",
    "man",      "men",        "woman",       "women",      "head",      "side",      "case",
    "week",     "month",      "fact",        "lot",        "eye",       "job",       "team",
    "idea",     "body",       "information", "face",       "others",    "level",     "office",
    "door",     "health",     "person",      "art",        "war",       "history",   "party",
    "result",   "change",     "morning",     "reason",     "research",  "girl",      "guy",
    "moment",   "air",        "teacher",     "force",      "education", "foot",      "boy",
    "age",      "policy",     "music",       "market",     "sense",     "nation",    "plan",
    "college",  "interest",   "death",       "experience", "effect",    "class",     "control",
    "care",     "field",      "development", "role",       "effort",    "rate",      "heart",
    "drug",     "show",       "light",       "voice",      "wife",      "process",   "law",
    "friend",   "data",       "model",       "language",   "text",      "token",     "computer",
    "science",  "open",       "read",        "write",      "call",      "ask",       "run",
    "move",     "live",       "believe",     "bring",      "happen",    "begin",     "keep",
    "hold",     "turn",       "start",       "seem",       "feel",      "try",       "leave",
    "put",      "mean",       "let",         "tell",       "become",    "show",      "hear",
    "play",     "pay",        "meet",        "include",    "continue",  "set",       "learn",
    "lead",     "understand", "watch",       "follow",     "stop",      "create",    "speak",
    "allow",    "add",        "spend",       "grow",       "offer",     "remember",  "love",
    "consider", "appear",     "buy",         "wait",       "serve",     "die",       "send",
    "expect",   "build",      "stay",        "fall",       "cut",       "reach",     "kill",
    "remain",   "good",       "important",   "large",      "big",       "different", "real",
    "best",     "better",     "sure",        "free",       "whole",     "young",     "early",
    "able",     "human",      "local",       "late",       "hard",      "major",     "social",
    "public",   "national",   "political",   "economic",   "white",     "black",     "red",
    "green",    "blue",       "simple",      "quick",      "brown",     "fox",       "jumps",
    "lazy",     "dog",        "cat",         "sun",        "moon",      "tree",      "river",
    "sea",      "city",       "road",        "car",        "food",      "bread",     "milk",
    "coffee",   "tea",        "table",       "chair",      "window",    "garden",    "king",
    "queen",    "once",       "upon",        "always",     "often",     "sometimes", "today",
    "tomorrow", "yesterday",  "hello",       "yes",        "please",    "thank",     "thanks",
    "sorry",    "number",     "zero",        "four",       "five",      "six",       "seven",
    "eight",    "nine",       "ten",         "hundred",    "thousand",  "million",   "Monday",
    "Sunday",   "January",    "English",     "American",   "The",       "In",        "It",
    "This",     "He",         "She",         "We",         "They",      "A",         "And",
    "But",      "If",         "What",        "When",       "There"};

/// GPT-2's byte-to-symbol table: printable Latin-1 bytes stand for themselves, the others

/// Builds the merge list while keeping a naive BPE encoder consistent with it.
class vocab_builder {
 public:
  explicit vocab_builder(uint32_t target) : target_(target) {}

  void add_token(std::string piece, token_kind kind) {
    index_.emplace(piece, static_cast<token_id>(tokens_.size()));
    tokens_.push_back(std::move(piece));
    kinds_.push_back(kind);
  }
  bool full() const { return tokens_.size() >= target_; }
  bool has(const std::string& piece) const { return index_.count(piece) != 0; }

  /// Adds the merge "a b" (lowest priority so far) and the token a+b.
  void add_merge(const std::string& a, const std::string& b) {
    ranks_.emplace(a + " " + b, static_cast<uint32_t>(merges_.size()));
    merges_.push_back(a + " " + b);
    add_token(a + b, token_kind::normal);
  }

  /// Byte-level BPE of one pre-token given as symbols: apply the best-ranked merge until
  /// none applies.
  std::vector<std::string> bpe(std::vector<std::string> parts) const {
    for (;;) {
      size_t best = parts.size();
      uint32_t best_rank = UINT32_MAX;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = ranks_.find(parts[i] + " " + parts[i + 1]);
        if (it != ranks_.end() && it->second < best_rank) {
          best_rank = it->second;
          best = i;
        }
      }
      if (best == parts.size()) return parts;
      parts[best] += parts[best + 1];
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
  }

  /// Adds merges until `symbols` encodes as one token. A new merge ranks below every
  /// existing one, so words added earlier keep encoding as one token.
  void add_word(const std::vector<std::string>& symbols) {
    for (;;) {
      if (full()) return;
      auto parts = bpe(symbols);
      if (parts.size() <= 1) return;
      add_merge(parts[0], parts[1]);
    }
  }

  vocab_spec finish() && {
    vocab_spec s;
    s.model = vocab_spec::model_kind::bpe;
    s.tokens = std::move(tokens_);
    s.kinds = std::move(kinds_);
    s.merges = std::move(merges_);
    return s;
  }

  const std::vector<std::string>& tokens() const { return tokens_; }

 private:
  uint32_t target_;
  std::vector<std::string> tokens_;
  std::vector<token_kind> kinds_;
  std::vector<std::string> merges_;
  std::unordered_map<std::string, token_id> index_;
  std::unordered_map<std::string, uint32_t> ranks_;
};

/// Whether `piece` is ASCII letters, optionally after the "Ġ" (space) symbol.
bool letter_piece(const std::string& piece, bool allow_space) {
  std::string_view p = piece;
  if (allow_space && p.starts_with("\xC4\xA0")) p.remove_prefix(2);
  if (p.empty()) return false;
  return std::all_of(p.begin(), p.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); });
}

}  // namespace

vocab_spec make_model_vocab(uint32_t vocab_size) {
  vocab_builder b(vocab_size);
  b.add_token("<unk>", token_kind::unknown);
  b.add_token("<s>", token_kind::control);
  b.add_token("</s>", token_kind::control);
  const auto& sym = detail::gpt2_bytes().utf8;
  for (const auto& s : sym)
    b.add_token(s, token_kind::normal);

  auto symbols_of = [&](std::string_view text) {
    std::vector<std::string> out;
    for (char ch : text)
      out.push_back(sym[static_cast<uint8_t>(ch)]);
    return out;
  };
  // Words: " word" first (running text), then "word" (line starts).
  std::set<std::string> seen;
  for (const char* word : common_words) {
    if (!seen.insert(word).second) continue;
    b.add_word(symbols_of(std::string(" ") + word));
    b.add_word(symbols_of(word));
  }

  // Filler: deterministic merges of letter pieces (a word-like piece followed by a
  // letters-only piece), so the extra tokens are reachable by ordinary text.
  std::vector<std::string> heads, tails;
  for (const auto& t : b.tokens()) {
    if (letter_piece(t, true)) heads.push_back(t);
    if (letter_piece(t, false)) tails.push_back(t);
  }
  uint64_t state = 0x746f6b656e6d696cull;  // fixed: the vocabulary does not depend on the seed
  uint64_t attempts = 0;
  while (!b.full() && attempts < uint64_t{vocab_size} * 1000) {
    ++attempts;
    const auto& a = heads[splitmix64(state) % heads.size()];
    const auto& c = tails[splitmix64(state) % tails.size()];
    if (a.size() + c.size() > 14 || b.has(a + c)) continue;
    std::string left = a, right = c;  // copies: add_merge may grow the vectors
    b.add_merge(left, right);
    heads.push_back(left + right);
    if (letter_piece(left, false)) tails.push_back(left + right);
  }
  auto spec = std::move(b).finish();
  spec.pre = "gpt2";
  spec.unk = 0;
  spec.bos = 1;
  spec.eos = 2;
  spec.add_bos = true;
  spec.add_space_prefix = false;
  return spec;
}

}  // namespace tokenmill
