#pragma once
/// The manifest parser's YAML reading kit: typed field readers that never throw and report
/// each problem with where it is in the file, one line each: `FILE:LINE:COLUMN: FIELD.PATH:
/// what is wrong; expected what` (the format manifest.hpp promises).
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/errors.hpp"

namespace tokenmill::detail {

/// A set of allowed words (map keys or values).
using keys = std::span<const std::string_view>;

inline constexpr uint64_t u32_max = std::numeric_limits<uint32_t>::max();
inline constexpr uint64_t u64_max = std::numeric_limits<uint64_t>::max();

/// "a, b, c".
std::string join(keys ks);

bool contains(keys ks, std::string_view k);

/// " (did you mean 'x'?)" when one allowed word is a near miss, else "".
std::string suggestion(std::string_view got, keys allowed);

// ---------------------------------------------------------------- problem collection

/// 1-based line and column.
struct position {
  int line = 1;
  int column = 1;
};

position pos_of(const YAML::Mark& m);
position pos_of(const YAML::Node& n);

/// Every problem found in one file, reported together.
class problems {
 public:
  explicit problems(std::string file) : file_(std::move(file)) {}

  void add(position at, std::string_view field, std::string_view what, std::string_view expected);
  bool empty() const { return list_.empty(); }
  size_t size() const { return list_.size(); }

  /// One line per problem, in file order (errc::invalid_request).
  error_info to_error();

 private:
  struct item {
    position at;
    std::string text;
  };
  std::string file_;
  std::vector<item> list_;
};

/// A key and its value as they appear in a map.
struct entry {
  YAML::Node key;
  YAML::Node value;
  /// Where to point at the value: a missing value's own mark is the next token, so
  /// point at its key instead.
  position at() const { return value.IsNull() ? pos_of(key) : pos_of(value); }
};

/// How a value looks, for "got ..." in messages.
std::string shown(const YAML::Node& n);

/// The keys of one YAML map, checked against the allowed set: unknown and duplicate
/// keys are reported once, here. A missing value (`router:`) reads as an empty map.
class map_reader {
 public:
  map_reader(problems& p, const YAML::Node& node, position at, std::string path, keys allowed);

  /// False when the node was not a map (already reported).
  bool valid() const { return valid_; }
  position at() const { return at_; }
  const std::string& path() const { return path_; }
  /// The full path of key `k` of this map.
  std::string field(std::string_view k) const;
  const entry* find(std::string_view k) const;
  const std::vector<entry>& entries() const { return entries_; }

  /// Reports a missing required key `k`, pointing at the map.
  void missing(std::string_view k, std::string_view expected) const;

 private:
  problems& p_;
  position at_;
  std::string path_;
  std::vector<entry> entries_;
  bool valid_ = true;
};

// ---------------------------------------------------------------- value readers

/// A whole number from `min` to `max`; `expected` says so when empty.
std::optional<uint64_t> read_uint(problems& p, const entry& e, const std::string& path,
                                  uint64_t min, uint64_t max, std::string expected = {});

/// A finite number >= min (> min when `exclusive`), at most `max`.
std::optional<double> read_number(problems& p, const entry& e, const std::string& path, double min,
                                  bool exclusive, double max = 1e15);

/// A non-empty string.
std::optional<std::string> read_string(problems& p, const entry& e, const std::string& path,
                                       std::string_view expected);

/// A string from the allowed set.
std::optional<std::string> read_choice(problems& p, const entry& e, const std::string& path,
                                       keys allowed);

/// Optional key `key` of `r`: a whole number from `min` to `max` into `out`, which keeps
/// its default when the key is absent or invalid (then reported).
template <class T>
void opt_uint(problems& p, const map_reader& r, std::string_view key, T& out, uint64_t min,
              uint64_t max, std::string expected = {}) {
  if (auto* e = r.find(key))
    if (auto v = read_uint(p, *e, r.field(key), min, max, std::move(expected)))
      out = static_cast<T>(*v);
}

/// Optional key `key` of `r`: a number as read_number reads it.
void opt_number(problems& p, const map_reader& r, std::string_view key, double& out, double min,
                bool exclusive);

/// Optional key `key` of `r`: a time given in `unit_ns` units, stored in ns.
void opt_time(problems& p, const map_reader& r, std::string_view key, uint64_t& out_ns,
              double unit_ns);

}  // namespace tokenmill::detail
