#include "common/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace tokenmill::metrics {
namespace {

void atomic_add(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

std::string quoted(std::string_view s) {
  return "'" + std::string(s) + "'";
}

/// A number as Prometheus (Go's ParseFloat) reads it: integers without exponent, others in
/// the shortest form that round-trips, as %g would write it (0.0005, 1.5e-07; the same
/// text as Go clients' `le` labels); +Inf, -Inf and NaN spelled that way.
void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else if (v == std::trunc(v) && std::fabs(v) < 1e15) {
    out += std::to_string(static_cast<int64_t>(v));
  } else {
    char buf[64];
    auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
    out.append(buf, res.ptr);
  }
}

std::string number(double v) {
  std::string s;
  append_number(s, v);
  return s;
}

bool valid_metric_name(std::string_view n) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool valid_label_name(std::string_view n) {
  if (n.empty() || n.substr(0, 2) == "__") return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

/// Throws unless `b` is non-empty, finite and strictly increasing; `what` names the owner.
void check_bounds(const std::vector<double>& b, std::string_view what) {
  if (b.empty())
    throw std::invalid_argument(std::string(what) + ": histogram needs at least one bucket bound");
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(b[i]))
      throw std::invalid_argument(std::string(what) + ": bucket bound " + std::to_string(i) +
                                  " is " + number(b[i]) +
                                  "; bounds must be finite (+Inf is implicit)");
    if (i > 0 && !(b[i] > b[i - 1]))
      throw std::invalid_argument(std::string(what) + ": bucket bounds must be strictly " +
                                  "increasing, but bound " + std::to_string(i) + " (" +
                                  number(b[i]) + ") follows " + number(b[i - 1]));
  }
}

void append_escaped(std::string& out, std::string_view s, bool quotes) {
  for (char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (quotes && c == '"')
      out += "\\\"";
    else
      out += c;
  }
}

/// `{a="x",b="y"}` (empty when there are no labels); `le` is appended when given.
void append_labels(std::string& out, const label_set& labels, const std::string* le = nullptr) {
  if (labels.empty() && !le) return;
  out += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    append_escaped(out, v, true);
    out += '"';
  }
  if (le) {
    if (!first) out += ',';
    out += "le=\"";
    out += *le;
    out += '"';
  }
  out += '}';
}

}  // namespace

void counter::inc(double v) {
  if (!(v >= 0)) return;  // negative or NaN
  atomic_add(value_, v);
}

void counter::advance_to(double total) {
  double cur = value_.load(std::memory_order_relaxed);
  while (total > cur && !value_.compare_exchange_weak(cur, total, std::memory_order_relaxed)) {
  }
}

void gauge::add(double v) {
  atomic_add(value_, v);
}

histogram::histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)) {
  check_bounds(bounds_, "histogram");
  buckets_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i)
    buckets_[i].store(0, std::memory_order_relaxed);
}

void histogram::observe(double v) {
  // First bound >= v: `le` is inclusive. NaN compares false everywhere: only +Inf.
  const size_t i = std::isnan(v)
                       ? bounds_.size()
                       : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) -
                                             bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, v);
}

histogram::snapshot histogram::snap() const {
  snapshot s;
  s.bounds = bounds_;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = total;
  }
  s.count = total;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

struct registry::family {
  std::string name;
  std::string help;
  kind type = kind::counter;
  std::vector<double> bounds;  ///< histograms: shared by every series
  std::map<label_set, std::unique_ptr<counter>> counters;
  std::map<label_set, std::unique_ptr<gauge>> gauges;
  std::map<label_set, std::unique_ptr<histogram>> histograms;
};

namespace {
const char* type_name(int k) {
  static const char* names[] = {"counter", "gauge", "histogram"};
  return names[k];
}
}  // namespace

registry::registry() = default;
registry::~registry() = default;

registry::family& registry::family_for(std::string_view name, std::string_view help, kind type,
                                       const label_set& labels, label_set& sorted) {
  if (!valid_metric_name(name))
    throw std::invalid_argument("invalid metric name " + quoted(name) +
                                ": must match [a-zA-Z_:][a-zA-Z0-9_:]*");
  sorted = labels;
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < sorted.size(); ++i) {
    const auto& k = sorted[i].first;
    if (!valid_label_name(k))
      throw std::invalid_argument("metric " + quoted(name) + ": invalid label name " + quoted(k) +
                                  ": must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __");
    if (i > 0 && sorted[i - 1].first == k)
      throw std::invalid_argument("metric " + quoted(name) + ": label " + quoted(k) +
                                  " is given twice");
  }
  auto it = families_.find(name);
  if (it == families_.end()) {
    auto f = std::make_unique<family>();
    f->name = std::string(name);
    f->help = std::string(help);
    f->type = type;
    it = families_.emplace(f->name, std::move(f)).first;
  } else if (it->second->type != type) {
    throw std::invalid_argument("metric " + quoted(name) + " is already registered as a " +
                                type_name(static_cast<int>(it->second->type)) + ", not a " +
                                type_name(static_cast<int>(type)));
  }
  return *it->second;
}

counter& registry::get_counter(std::string_view name, std::string_view help,
                               const label_set& labels) {
  std::lock_guard lock(mutex_);
  label_set sorted;
  auto& f = family_for(name, help, kind::counter, labels, sorted);
  auto& slot = f.counters[std::move(sorted)];
  if (!slot) slot = std::make_unique<counter>();
  return *slot;
}

gauge& registry::get_gauge(std::string_view name, std::string_view help, const label_set& labels) {
  std::lock_guard lock(mutex_);
  label_set sorted;
  auto& f = family_for(name, help, kind::gauge, labels, sorted);
  auto& slot = f.gauges[std::move(sorted)];
  if (!slot) slot = std::make_unique<gauge>();
  return *slot;
}

histogram& registry::get_histogram(std::string_view name, std::string_view help,
                                   std::vector<double> upper_bounds, const label_set& labels) {
  const std::string what = "metric " + quoted(name);
  // Checked before the family exists, so that a rejected call registers nothing.
  check_bounds(upper_bounds, what);
  for (const auto& [k, v] : labels)
    if (k == "le")
      throw std::invalid_argument(what + ": label 'le' is reserved for histogram buckets");
  std::lock_guard lock(mutex_);
  const bool known = families_.find(name) != families_.end();
  label_set sorted;
  auto& f = family_for(name, help, kind::histogram, labels, sorted);
  if (!known)
    f.bounds = upper_bounds;
  else if (f.bounds != upper_bounds)
    throw std::invalid_argument(what +
                                ": histogram is already registered with other bucket bounds");
  auto& slot = f.histograms[std::move(sorted)];
  if (!slot) slot = std::make_unique<histogram>(std::move(upper_bounds));
  return *slot;
}

std::string registry::expose() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP ";
    out += name;
    out += ' ';
    append_escaped(out, f->help, false);
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type_name(static_cast<int>(f->type));
    out += '\n';
    // `name` is a structured binding: captured by an init-capture, since clang before 16
    // cannot capture bindings (the fuzz build uses clang 14).
    auto sample = [&, &name = name](std::string_view suffix, const label_set& labels,
                                    const std::string* le, const std::string& value) {
      out += name;
      out += suffix;
      append_labels(out, labels, le);
      out += ' ';
      out += value;
      out += '\n';
    };
    for (const auto& [labels, c] : f->counters)
      sample("", labels, nullptr, number(c->value()));
    for (const auto& [labels, g] : f->gauges)
      sample("", labels, nullptr, number(g->value()));
    for (const auto& [labels, h] : f->histograms) {
      const auto s = h->snap();
      for (size_t i = 0; i < s.bounds.size(); ++i) {
        const auto le = number(s.bounds[i]);
        sample("_bucket", labels, &le, std::to_string(s.cumulative[i]));
      }
      const std::string inf = "+Inf";
      sample("_bucket", labels, &inf, std::to_string(s.count));
      sample("_sum", labels, nullptr, number(s.sum));
      sample("_count", labels, nullptr, std::to_string(s.count));
    }
  }
  return out;
}

std::vector<double> exponential_buckets(double start, double factor, size_t count) {
  if (!(start > 0) || !std::isfinite(start))
    throw std::invalid_argument("exponential_buckets: start must be finite and > 0, got " +
                                number(start));
  if (!(factor > 1) || !std::isfinite(factor))
    throw std::invalid_argument("exponential_buckets: factor must be finite and > 1, got " +
                                number(factor));
  if (count == 0) throw std::invalid_argument("exponential_buckets: count must be >= 1");
  std::vector<double> b(count);
  double v = start;
  for (size_t i = 0; i < count; ++i, v *= factor) {
    if (!std::isfinite(v))
      throw std::invalid_argument("exponential_buckets: bound " + std::to_string(i) + " overflows");
    b[i] = v;
  }
  return b;
}

std::vector<double> latency_buckets_seconds() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
          0.15,   0.2,   0.3,    0.5,   0.75,   1,    1.5,   2.5,  5,    10,   20,   30,    60};
}

}  // namespace tokenmill::metrics
