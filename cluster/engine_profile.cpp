#include "cluster/engine_profile.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace tokenmill {
namespace {

using ojson = nlohmann::ordered_json;

/// Reads fields of one JSON document, collecting one line per problem.
class reader {
 public:
  explicit reader(std::string_view source) : source_(source) {}

  void problem(const std::string& field, const std::string& what) {
    problems_.push_back(fmt::format("{}: {}: {}", source_, field, what));
  }
  bool ok() const { return problems_.empty(); }
  std::string message() const {
    std::string m;
    for (const auto& p : problems_)
      m += (m.empty() ? "" : "\n") + p;
    return m;
  }

  const nlohmann::json* object(const nlohmann::json& j, const std::string& key,
                               const std::string& field) {
    auto it = j.find(key);
    if (it == j.end()) {
      problem(field, "missing; expected an object");
      return nullptr;
    }
    if (!it->is_object()) {
      problem(field, "expected an object");
      return nullptr;
    }
    return &*it;
  }
  /// A number in [lo, hi]; `positive` excludes lo itself.
  double number(const nlohmann::json& j, const std::string& key, const std::string& field,
                double lo, double hi, bool positive, bool required = true, double dflt = 0) {
    auto it = j.find(key);
    if (it == j.end()) {
      if (required) problem(field, "missing; expected a number");
      return dflt;
    }
    if (!it->is_number()) {
      problem(field, "expected a number");
      return dflt;
    }
    double v = it->get<double>();
    if (!std::isfinite(v) || v < lo || v > hi || (positive && v <= lo)) {
      problem(field, fmt::format("{} is out of range; expected {} number{}", v,
                                 positive ? "a positive" : "a non-negative",
                                 hi < 1e300 ? fmt::format(" up to {}", hi) : std::string()));
      return dflt;
    }
    return v;
  }
  uint64_t whole(const nlohmann::json& j, const std::string& key, const std::string& field,
                 uint64_t lo, uint64_t hi, bool required = true, uint64_t dflt = 0) {
    auto it = j.find(key);
    if (it == j.end()) {
      if (required) problem(field, "missing; expected a whole number");
      return dflt;
    }
    if (!it->is_number_unsigned()) {
      problem(field, fmt::format("expected a whole number from {} to {}", lo, hi));
      return dflt;
    }
    uint64_t v = it->get<uint64_t>();
    if (v < lo || v > hi) {
      problem(field, fmt::format("{} is out of range; expected {} to {}", v, lo, hi));
      return dflt;
    }
    return v;
  }
  std::string string(const nlohmann::json& j, const std::string& key, const std::string& field,
                     bool required = true) {
    auto it = j.find(key);
    if (it == j.end()) {
      if (required) problem(field, "missing; expected a string");
      return {};
    }
    if (!it->is_string()) {
      problem(field, "expected a string");
      return {};
    }
    return it->get<std::string>();
  }

 private:
  std::string source_;
  std::vector<std::string> problems_;
};

constexpr uint64_t u32_max = std::numeric_limits<uint32_t>::max();

/// Piecewise-linear y(x) through `pts` (sorted by x, distinct x): interpolated inside,
/// extrapolated along the end segments outside, proportional (y/x) with a single point.
double piecewise(const std::vector<std::pair<double, double>>& pts, double x) {
  if (pts.empty()) return 0;
  if (pts.size() == 1) return pts[0].first > 0 ? pts[0].second * x / pts[0].first : pts[0].second;
  size_t i = 1;
  while (i + 1 < pts.size() && x > pts[i].first)
    ++i;
  const auto& [x0, y0] = pts[i - 1];
  const auto& [x1, y1] = pts[i];
  return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
}

}  // namespace

result<prefill_saturation> find_prefill_saturation(std::span<const profile_prefill_point> points,
                                                   double fraction) {
  if (!(fraction > 0 && fraction <= 1))
    return error_info{errc::invalid_request,
                      fmt::format("saturation fraction {} is outside (0, 1]", fraction)};
  // Per chunk size: every prompt token it prefilled over every second it took, so that the
  // many calls of the chunked prompts average out the noise of a single call.
  std::map<uint32_t, std::pair<double, double>> sums;  // chunk -> (tokens, seconds)
  for (const auto& p : points)
    if (p.seconds > 0) {
      sums[p.chunk_tokens].first += p.prompt_tokens;
      sums[p.chunk_tokens].second += p.seconds;
    }
  if (sums.empty()) return error_info{errc::invalid_request, "no prefill measurement"};
  prefill_saturation s;
  for (const auto& [c, ts] : sums)
    s.peak_tokens_per_s = std::max(s.peak_tokens_per_s, ts.first / ts.second);
  for (const auto& [c, ts] : sums)
    if (ts.first / ts.second >= fraction * s.peak_tokens_per_s) {
      s.chunk_tokens = c;
      s.tokens_per_s = ts.first / ts.second;
      break;
    }
  return s;
}

std::string profile_to_json(const engine_profile& p) {
  ojson j;
  j["version"] = p.version;
  ojson e = {{"kind", p.engine},     {"model", p.model_path}, {"name", p.model_name},
             {"threads", p.threads}, {"device", p.device},    {"max_context", p.max_context}};
  if (p.has_sim)
    e["sim"] = {{"prefill_us_per_token", p.sim.prefill_ns_per_token / 1e3},
                {"prefill_base_us", p.sim.prefill_base_ns / 1e3},
                {"decode_step_ms", p.sim.decode_base_ns / 1e6},
                {"decode_per_seq_us", p.sim.decode_per_seq_ns / 1e3},
                {"decode_per_ctx_ns", p.sim.decode_per_ctx_token_ns},
                {"slowdown", p.sim.slowdown},
                {"vocab", p.sim.vocab_size},
                {"max_context", p.sim.max_context},
                {"seed", p.sim.seed}};
  j["engine"] = e;
  j["layout"] = {{"block_tokens", p.layout.block_tokens},
                 {"layers", p.layout.layers},
                 {"kv_heads", p.layout.kv_heads},
                 {"head_dim", p.layout.head_dim},
                 {"dtype_bytes", p.layout.dtype_bytes},
                 {"block_bytes", p.layout.block_bytes()},
                 {"kv_bytes_per_token", p.kv_bytes_per_token},
                 {"memory_bytes", p.kv_memory_bytes},
                 {"memory_source", p.kv_memory_source},
                 {"max_blocks", p.kv_max_blocks}};
  j["machine"] = {{"cpu", p.cpu},
                  {"hardware_threads", p.hardware_threads},
                  {"loadavg_1min_before", p.loadavg_before},
                  {"loadavg_1min_after", p.loadavg_after},
                  {"device", p.device_name}};
  j["saturation"] = {{"fraction", p.saturation_fraction},
                     {"chunk_tokens", p.saturation_chunk},
                     {"peak_tokens_per_s", p.peak_prefill_tokens_per_s}};
  ojson pre = ojson::array();
  for (const auto& x : p.prefill)
    pre.push_back({{"chunk_tokens", x.chunk_tokens},
                   {"prompt_tokens", x.prompt_tokens},
                   {"calls", x.calls},
                   {"seconds", x.seconds},
                   {"tokens_per_s", x.seconds > 0 ? x.prompt_tokens / x.seconds : 0.0}});
  j["prefill"] = pre;
  ojson dec = ojson::array();
  for (const auto& x : p.decode)
    dec.push_back({{"batch", x.batch},
                   {"context_tokens", x.context_tokens},
                   {"step_seconds", x.step_seconds},
                   {"tokens_per_s", x.step_seconds > 0 ? x.batch / x.step_seconds : 0.0}});
  j["decode"] = dec;
  return j.dump(2) + "\n";
}

result<engine_profile> parse_profile(std::string_view json_text, std::string_view source) {
  auto bad = [&](const std::string& what) {
    return error_info{errc::invalid_request, fmt::format("{}: {}", source, what)};
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::parse_error& e) {
    return bad(fmt::format("not JSON (byte {}): {}", e.byte, e.what()));
  }
  if (!j.is_object()) return bad("expected a JSON object (a tokenmill profile)");
  reader r(source);
  engine_profile p;
  p.version = static_cast<uint32_t>(r.whole(j, "version", "version", 1, u32_max));
  if (!r.ok()) return error_info{errc::invalid_request, r.message()};
  if (p.version != engine_profile_version)
    return bad(fmt::format("version: {} is not supported; this build reads version {}", p.version,
                           engine_profile_version));
  if (const auto* e = r.object(j, "engine", "engine")) {
    p.engine = r.string(*e, "kind", "engine.kind");
    if (!p.engine.empty() && p.engine != "sim" && p.engine != "cpu" && p.engine != "cuda")
      r.problem("engine.kind",
                fmt::format("'{}' is not an engine; expected sim, cpu or cuda", p.engine));
    p.model_path = r.string(*e, "model", "engine.model");
    p.model_name = r.string(*e, "name", "engine.name", false);
    p.threads = static_cast<uint32_t>(r.whole(*e, "threads", "engine.threads", 1, 4096));
    p.device = static_cast<uint32_t>(r.whole(*e, "device", "engine.device", 0, u32_max, false));
    p.max_context =
        static_cast<uint32_t>(r.whole(*e, "max_context", "engine.max_context", 2, u32_max));
    if (p.engine != "sim" && !p.engine.empty() && p.model_path.empty())
      r.problem("engine.model", fmt::format("empty; the {} engine needs a model file", p.engine));
    if (p.engine == "sim") {
      if (const auto* s = r.object(*e, "sim", "engine.sim")) {
        p.has_sim = true;
        auto ns = [&](const char* key, double unit) {
          return static_cast<uint64_t>(std::llround(
              r.number(*s, key, fmt::format("engine.sim.{}", key), 0, 1e12, false) * unit));
        };
        p.sim.prefill_ns_per_token = ns("prefill_us_per_token", 1e3);
        p.sim.prefill_base_ns = ns("prefill_base_us", 1e3);
        p.sim.decode_base_ns = ns("decode_step_ms", 1e6);
        p.sim.decode_per_seq_ns = ns("decode_per_seq_us", 1e3);
        p.sim.decode_per_ctx_token_ns = ns("decode_per_ctx_ns", 1);
        p.sim.slowdown = r.number(*s, "slowdown", "engine.sim.slowdown", 0, 1e6, true);
        p.sim.vocab_size = static_cast<uint32_t>(
            r.whole(*s, "vocab", "engine.sim.vocab", sim_engine::first_word_id + 1, u32_max));
        p.sim.max_context =
            static_cast<uint32_t>(r.whole(*s, "max_context", "engine.sim.max_context", 2, u32_max));
        p.sim.seed = r.whole(*s, "seed", "engine.sim.seed", 0, std::numeric_limits<uint64_t>::max(),
                             false, p.sim.seed);
      }
    }
  }
  if (const auto* l = r.object(j, "layout", "layout")) {
    auto u = [&](const char* key, uint64_t lo, uint64_t hi) {
      return static_cast<uint32_t>(r.whole(*l, key, fmt::format("layout.{}", key), lo, hi));
    };
    p.layout.block_tokens = u("block_tokens", 1, 65536);
    p.layout.layers = u("layers", 1, 4096);
    p.layout.kv_heads = u("kv_heads", 1, 4096);
    p.layout.head_dim = u("head_dim", 1, 65536);
    p.layout.dtype_bytes = u("dtype_bytes", 2, 4);
    if (r.ok())
      if (auto v = p.layout.validate(); !v) r.problem("layout", v.error().message);
    p.kv_bytes_per_token = r.whole(*l, "kv_bytes_per_token", "layout.kv_bytes_per_token", 1,
                                   std::numeric_limits<uint64_t>::max());
    p.kv_memory_bytes =
        r.whole(*l, "memory_bytes", "layout.memory_bytes", 0, std::numeric_limits<uint64_t>::max());
    p.kv_max_blocks = r.whole(*l, "max_blocks", "layout.max_blocks", 0, u32_max);
    p.kv_memory_source = r.string(*l, "memory_source", "layout.memory_source", false);
  }
  if (auto it = j.find("machine"); it != j.end() && it->is_object()) {
    p.cpu = r.string(*it, "cpu", "machine.cpu", false);
    p.device_name = r.string(*it, "device", "machine.device", false);
    p.hardware_threads = static_cast<uint32_t>(
        r.whole(*it, "hardware_threads", "machine.hardware_threads", 0, u32_max, false));
  }
  auto points = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    if (it == j.end() || !it->is_array() || it->empty()) {
      r.problem(key, "missing or empty; expected a list of measurements");
      return nullptr;
    }
    return &*it;
  };
  if (const auto* a = points("prefill"))
    for (size_t i = 0; i < a->size(); ++i) {
      std::string f = fmt::format("prefill[{}]", i);
      const auto& x = (*a)[i];
      if (!x.is_object()) {
        r.problem(f, "expected an object");
        continue;
      }
      profile_prefill_point q;
      q.chunk_tokens =
          static_cast<uint32_t>(r.whole(x, "chunk_tokens", f + ".chunk_tokens", 1, u32_max));
      q.prompt_tokens =
          static_cast<uint32_t>(r.whole(x, "prompt_tokens", f + ".prompt_tokens", 1, u32_max));
      q.calls = static_cast<uint32_t>(r.whole(x, "calls", f + ".calls", 1, u32_max));
      q.seconds = r.number(x, "seconds", f + ".seconds", 0, 1e9, true);
      p.prefill.push_back(q);
    }
  if (const auto* a = points("decode"))
    for (size_t i = 0; i < a->size(); ++i) {
      std::string f = fmt::format("decode[{}]", i);
      const auto& x = (*a)[i];
      if (!x.is_object()) {
        r.problem(f, "expected an object");
        continue;
      }
      profile_decode_point q;
      q.batch = static_cast<uint32_t>(r.whole(x, "batch", f + ".batch", 1, u32_max));
      q.context_tokens =
          static_cast<uint32_t>(r.whole(x, "context_tokens", f + ".context_tokens", 1, u32_max));
      q.step_seconds = r.number(x, "step_seconds", f + ".step_seconds", 0, 1e9, true);
      p.decode.push_back(q);
    }
  if (const auto* s = r.object(j, "saturation", "saturation"))
    p.saturation_fraction = r.number(*s, "fraction", "saturation.fraction", 0, 1, true);
  if (!r.ok()) return error_info{errc::invalid_request, r.message()};
  // The saturation point is derived from the points, so a hand-edited profile stays
  // consistent.
  auto sat = find_prefill_saturation(p.prefill, p.saturation_fraction);
  if (!sat) return bad(fmt::format("prefill: {}", sat.error().message));
  p.saturation_chunk = sat->chunk_tokens;
  p.peak_prefill_tokens_per_s = sat->peak_tokens_per_s;
  return p;
}

std::vector<uint32_t> profile_chunks(const engine_profile& p) {
  std::vector<uint32_t> c;
  for (const auto& x : p.prefill)
    c.push_back(x.chunk_tokens);
  std::sort(c.begin(), c.end());
  c.erase(std::unique(c.begin(), c.end()), c.end());
  return c;
}

uint32_t profile_max_batch(const engine_profile& p) {
  uint32_t b = 0;
  for (const auto& x : p.decode)
    b = std::max(b, x.batch);
  return b;
}

double profile_prefill_seconds(const engine_profile& p, uint32_t chunk, uint32_t prompt_tokens) {
  if (prompt_tokens == 0) return 0;
  auto curve = [&](auto pick) {
    std::map<double, double> m;
    for (const auto& x : p.prefill)
      if (pick(x)) m[x.prompt_tokens] = x.seconds;
    return std::vector<std::pair<double, double>>(m.begin(), m.end());
  };
  if (prompt_tokens <= chunk) {
    // One call of prompt_tokens tokens: the single-call points.
    auto single =
        curve([](const profile_prefill_point& x) { return x.prompt_tokens == x.chunk_tokens; });
    double s = piecewise(single, prompt_tokens);
    // Extrapolating below the smallest call may cross zero: never below proportional.
    if (!single.empty() && prompt_tokens < single.front().first)
      s = std::max(s, single.front().second * prompt_tokens / single.front().first);
    return std::max(s, 0.0);
  }
  // The measured chunk size nearest to `chunk` (the planner asks for measured ones).
  auto chunks = profile_chunks(p);
  uint32_t best = chunks.front();
  for (uint32_t c : chunks)
    if (std::llabs(int64_t{c} - chunk) < std::llabs(int64_t{best} - chunk)) best = c;
  auto pts = curve([&](const profile_prefill_point& x) { return x.chunk_tokens == best; });
  double s = piecewise(pts, prompt_tokens);
  if (!pts.empty() && s <= 0) s = pts.back().second * prompt_tokens / pts.back().first;
  return std::max(s, 0.0);
}

prefill_speed profile_speed(const engine_profile& p, uint32_t chunk, const std::string& source) {
  prefill_speed s;
  s.source = source;
  uint32_t longest = p.max_context;
  for (const auto& x : p.prefill)
    longest = std::max(longest, x.prompt_tokens);
  double prev = 0;
  for (uint64_t n = 16; !p.prefill.empty() && n <= std::max<uint32_t>(longest, 16); n *= 2) {
    double t = std::max(prev, profile_prefill_seconds(p, chunk, static_cast<uint32_t>(n)));
    if (t <= 0) continue;  // nothing measured this small: the next point covers it
    s.points.emplace_back(static_cast<uint32_t>(n), t);
    prev = t;
  }
  if (p.peak_prefill_tokens_per_s > 0)
    s.tokens_per_s = p.peak_prefill_tokens_per_s;
  else if (!s.points.empty())
    s.tokens_per_s = s.points.back().first / s.points.back().second;
  return s;
}

double profile_decode_seconds(const engine_profile& p, double batch, double context) {
  std::map<double, std::map<double, double>> by_ctx;  // context -> batch -> seconds
  for (const auto& x : p.decode)
    by_ctx[x.context_tokens][x.batch] = x.step_seconds;
  std::vector<std::pair<double, double>> at_ctx;
  // A bigger batch or a longer context never makes a step cheaper: noise in the measured
  // points (a disturbed profile) is flattened to the running maximum, so that neither the
  // interpolation nor the extrapolation beyond the last point can slope downwards.
  for (const auto& [ctx, m] : by_ctx) {
    std::vector<std::pair<double, double>> pts(m.begin(), m.end());
    for (size_t i = 1; i < pts.size(); ++i)
      pts[i].second = std::max(pts[i].second, pts[i - 1].second);
    double s = pts.size() == 1 ? pts[0].second : piecewise(pts, batch);
    at_ctx.emplace_back(ctx, std::max(s, 0.0));
  }
  for (size_t i = 1; i < at_ctx.size(); ++i)
    at_ctx[i].second = std::max(at_ctx[i].second, at_ctx[i - 1].second);
  double s = at_ctx.size() == 1 ? at_ctx[0].second : piecewise(at_ctx, context);
  if (s > 0) return s;
  // Extrapolation toward short contexts fell to zero: the cheapest measured step instead.
  double cheapest = std::numeric_limits<double>::max();
  for (const auto& x : p.decode)
    cheapest = std::min(cheapest, x.step_seconds);
  return p.decode.empty() ? 0 : cheapest;
}

}  // namespace tokenmill
