#include "cluster/detail/yaml_reader.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <tuple>

#include <fmt/format.h>

namespace tokenmill::detail {
namespace {

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string range_text(uint64_t min, uint64_t max) {
  if (max == u32_max || max == u64_max) return fmt::format("a whole number >= {}", min);
  return fmt::format("a whole number from {} to {}", min, max);
}

}  // namespace

std::string join(keys ks) {
  std::string out;
  for (auto k : ks) {
    if (!out.empty()) out += ", ";
    out += k;
  }
  return out;
}

bool contains(keys ks, std::string_view k) {
  return std::find(ks.begin(), ks.end(), k) != ks.end();
}

std::string suggestion(std::string_view got, keys allowed) {
  std::string_view best;
  size_t best_d = 3;
  for (auto k : allowed) {
    size_t d = edit_distance(got, k);
    // Only near misses of longer words: "tpu" is not a typo of "cpu".
    if (d < best_d && d * 4 <= k.size()) best = k, best_d = d;
  }
  return best.empty() ? std::string{} : fmt::format(" (did you mean '{}'?)", best);
}

position pos_of(const YAML::Mark& m) {
  if (m.is_null()) return {};
  return {m.line + 1, m.column + 1};
}

position pos_of(const YAML::Node& n) {
  return pos_of(n.Mark());
}

// ---------------------------------------------------------------- problem collection

void problems::add(position at, std::string_view field, std::string_view what,
                   std::string_view expected) {
  list_.push_back({at, fmt::format("{}:{}:{}: {}: {}; expected {}", file_, at.line, at.column,
                                   field, what, expected)});
}

error_info problems::to_error() {
  std::stable_sort(list_.begin(), list_.end(), [](const item& a, const item& b) {
    return std::tie(a.at.line, a.at.column) < std::tie(b.at.line, b.at.column);
  });
  std::string msg;
  for (auto& p : list_) {
    if (!msg.empty()) msg += '\n';
    msg += p.text;
  }
  return error_info{errc::invalid_request, std::move(msg)};
}

std::string shown(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "no value";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Scalar:
      if (n.Tag() == "!") return fmt::format("the string \"{}\"", n.Scalar());
      return fmt::format("'{}'", n.Scalar());
  }
  return "?";
}

map_reader::map_reader(problems& p, const YAML::Node& node, position at, std::string path,
                       keys allowed)
    : p_(p), at_(at), path_(std::move(path)) {
  if (node.IsNull()) return;
  if (!node.IsMap()) {
    p_.add(at, path_.empty() ? "(document)" : path_, fmt::format("got {}", shown(node)),
           fmt::format("a map with keys {}", join(allowed)));
    valid_ = false;
    return;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    entry e{it->first, it->second};
    if (!e.key.IsScalar()) {
      p_.add(pos_of(e.key), field(""), fmt::format("a key that is {}", shown(e.key)),
             fmt::format("one of {}", join(allowed)));
      continue;
    }
    const auto& k = e.key.Scalar();
    if (!contains(allowed, k)) {
      p_.add(pos_of(e.key), field(k), fmt::format("unknown key '{}'{}", k, suggestion(k, allowed)),
             fmt::format("one of {}", join(allowed)));
      continue;
    }
    if (auto* first = find(k)) {
      p_.add(pos_of(e.key), field(k),
             fmt::format("duplicate key (first given on line {})", pos_of(first->key).line),
             "each key once");
      continue;
    }
    entries_.push_back(std::move(e));
  }
}

std::string map_reader::field(std::string_view k) const {
  if (path_.empty()) return std::string(k);
  if (k.empty()) return path_;
  return fmt::format("{}.{}", path_, k);
}

const entry* map_reader::find(std::string_view k) const {
  for (auto& e : entries_)
    if (e.key.Scalar() == k) return &e;
  return nullptr;
}

void map_reader::missing(std::string_view k, std::string_view expected) const {
  p_.add(at_, field(k), "missing required field", expected);
}

// ---------------------------------------------------------------- value readers

std::optional<uint64_t> read_uint(problems& p, const entry& e, const std::string& path,
                                  uint64_t min, uint64_t max, std::string expected) {
  if (expected.empty()) expected = range_text(min, max);
  const auto& v = e.value;
  if (!v.IsScalar() || v.Tag() == "!") {
    p.add(e.at(), path, fmt::format("got {}", shown(v)), expected);
    return std::nullopt;
  }
  const auto& s = v.Scalar();
  const char* b = s.data();
  const char* end = s.data() + s.size();
  if (b != end && *b == '+') ++b;
  int64_t sv = 0;
  auto [ptr, ec] = std::from_chars(b, end, sv);
  if (ec == std::errc() && ptr == end && sv < 0) {
    p.add(e.at(), path, fmt::format("got {}, a negative number", s), expected);
    return std::nullopt;
  }
  uint64_t uv = 0;
  auto [uptr, uec] = std::from_chars(b, end, uv);
  if (uec == std::errc::result_out_of_range) {
    p.add(e.at(), path, fmt::format("got {}, too large", s), expected);
    return std::nullopt;
  }
  if (uec != std::errc() || uptr != end) {
    char* dend = nullptr;
    std::strtod(s.c_str(), &dend);
    bool numeric = !s.empty() && dend == s.c_str() + s.size();
    p.add(e.at(), path,
          numeric ? fmt::format("got {}, not a whole number", s) : fmt::format("got {}", shown(v)),
          expected);
    return std::nullopt;
  }
  if (uv < min || uv > max) {
    p.add(e.at(), path, fmt::format("got {}, out of range", s), expected);
    return std::nullopt;
  }
  return uv;
}

std::optional<double> read_number(problems& p, const entry& e, const std::string& path, double min,
                                  bool exclusive, double max) {
  auto expected =
      exclusive ? fmt::format("a number > {}", min) : fmt::format("a number >= {}", min);
  const auto& v = e.value;
  if (!v.IsScalar() || v.Tag() == "!") {
    p.add(e.at(), path, fmt::format("got {}", shown(v)), expected);
    return std::nullopt;
  }
  const auto& s = v.Scalar();
  char* dend = nullptr;
  errno = 0;
  double d = s.empty() ? 0 : std::strtod(s.c_str(), &dend);
  if (s.empty() || dend != s.c_str() + s.size() || !std::isfinite(d)) {
    p.add(e.at(), path, fmt::format("got {}", shown(v)), expected);
    return std::nullopt;
  }
  if (d < min || (exclusive && d == min) || d > max) {
    p.add(e.at(), path, fmt::format("got {}, out of range", s),
          d > max ? fmt::format("{} and <= {}", expected, max) : expected);
    return std::nullopt;
  }
  return d;
}

std::optional<std::string> read_string(problems& p, const entry& e, const std::string& path,
                                       std::string_view expected) {
  if (!e.value.IsScalar() || e.value.Scalar().empty()) {
    p.add(e.at(), path, fmt::format("got {}", shown(e.value)), expected);
    return std::nullopt;
  }
  return e.value.Scalar();
}

std::optional<std::string> read_choice(problems& p, const entry& e, const std::string& path,
                                       keys allowed) {
  auto expected = fmt::format("one of {}", join(allowed));
  auto s = read_string(p, e, path, expected);
  if (!s) return std::nullopt;
  if (!contains(allowed, *s)) {
    p.add(e.at(), path, fmt::format("unknown value '{}'{}", *s, suggestion(*s, allowed)), expected);
    return std::nullopt;
  }
  return s;
}

void opt_number(problems& p, const map_reader& r, std::string_view key, double& out, double min,
                bool exclusive) {
  if (auto* e = r.find(key))
    if (auto v = read_number(p, *e, r.field(key), min, exclusive)) out = *v;
}

void opt_time(problems& p, const map_reader& r, std::string_view key, uint64_t& out_ns,
              double unit_ns) {
  if (auto* e = r.find(key))
    if (auto v = read_number(p, *e, r.field(key), 0, false, 1e15 / unit_ns))
      out_ns = static_cast<uint64_t>(std::llround(*v * unit_ns));
}

}  // namespace tokenmill::detail
