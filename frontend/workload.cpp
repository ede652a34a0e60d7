#include "frontend/workload.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>

#include <fmt/format.h>

#include "common/stats.hpp"

namespace tokenmill::workload {
namespace {

/// A generator for item `i` of a stream named by `salt`, so that each request depends
/// only on (seed, salt, i) and not on how many draws earlier requests made.
std::mt19937_64 rng_for(uint64_t seed, uint64_t salt, uint64_t i) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(salt), static_cast<uint32_t>(i),
                    static_cast<uint32_t>(i >> 32)};
  return std::mt19937_64(seq);
}

void append_random_ids(std::vector<token_id>& out, uint32_t n, const vocab_range& v,
                       std::mt19937_64& rng) {
  std::uniform_int_distribution<token_id> d(v.lo, std::max(v.lo, v.hi - 1));
  for (uint32_t k = 0; k < n; ++k)
    out.push_back(d(rng));
}

error_info bad_file(const std::string& what, const std::string& msg) {
  return {errc::invalid_request, fmt::format("{}: {}", what, msg)};
}

bool is_human(const std::string& from) {
  return from == "human" || from == "user";
}
bool is_model(const std::string& from) {
  return from == "gpt" || from == "chatgpt" || from == "assistant" || from == "bard";
}

}  // namespace

std::vector<double> arrival_schedule(size_t n, double rate, double burstiness, uint64_t seed) {
  std::vector<double> t(n, 0.0);
  if (std::isinf(rate) || n == 0) return t;
  // Gamma(shape k, scale 1/(rate k)) has mean 1/rate; k = 1 is the exponential.
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> gap(burstiness, 1.0 / (rate * burstiness));
  double at = 0;
  for (size_t i = 0; i < n; ++i) {
    t[i] = at;
    at += gap(rng);
  }
  return t;
}

uint32_t length_range::lo() const {
  double r = std::clamp(range_ratio, 0.0, 1.0);
  return std::max<uint32_t>(1, static_cast<uint32_t>(std::floor(len * (1 - r))));
}

uint32_t length_range::hi() const {
  double r = std::clamp(range_ratio, 0.0, 1.0);
  return std::max(lo(), static_cast<uint32_t>(std::floor(len * (1 + r))));
}

uint32_t sample_length(const length_range& r, std::mt19937_64& rng) {
  uint32_t lo = r.lo(), hi = r.hi();
  if (lo == hi) return lo;
  return std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
}

std::vector<bench_request> random_workload(const random_spec& s) {
  std::vector<bench_request> out;
  out.reserve(s.requests);
  for (size_t i = 0; i < s.requests; ++i) {
    auto rng = rng_for(s.seed, 1, i);
    bench_request r;
    uint32_t in = sample_length(s.input, rng);
    r.max_tokens = r.expected_output_len = sample_length(s.output, rng);
    append_random_ids(r.prompt_ids, in, s.vocab, rng);
    r.prompt_len = in;
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<bench_request> shared_prefix_workload(const shared_prefix_spec& s) {
  uint32_t groups = std::max<uint32_t>(1, s.prefixes);
  std::vector<std::vector<token_id>> prefixes(groups);
  for (uint32_t g = 0; g < groups; ++g) {
    auto rng = rng_for(s.seed, 2, g);
    append_random_ids(prefixes[g], s.prefix_len, s.vocab, rng);
  }
  size_t n = s.requests ? s.requests : static_cast<size_t>(groups) * s.users;
  std::vector<bench_request> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    auto rng = rng_for(s.seed, 3, i);
    bench_request r;
    r.group = static_cast<uint32_t>(i % groups);
    r.prompt_ids = prefixes[r.group];
    uint32_t in = sample_length(s.input, rng);
    r.max_tokens = r.expected_output_len = sample_length(s.output, rng);
    append_random_ids(r.prompt_ids, in, s.vocab, rng);
    r.prompt_len = static_cast<uint32_t>(r.prompt_ids.size());
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<bench_request> multi_turn_workload(const multi_turn_spec& s) {
  const uint32_t chats = std::max<uint32_t>(1, s.conversations);
  const uint32_t turns = std::max<uint32_t>(1, s.turns);
  // Each chat's history grows turn by turn; request i takes chat i % chats at its next turn
  // (past `turns`, a chat starts over with a new history from a new seed stream).
  std::vector<std::vector<token_id>> history(chats);
  std::vector<uint32_t> turn(chats, 0), round(chats, 0);
  size_t n = s.requests ? s.requests : static_cast<size_t>(chats) * turns;
  std::vector<bench_request> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<uint32_t>(i % chats);
    auto& h = history[c];
    if (turn[c] == 0) {
      h.clear();
      auto rng = rng_for(s.seed, 4, (uint64_t{round[c]} << 32) | c);
      append_random_ids(h, s.system_len, s.vocab, rng);
    }
    auto rng = rng_for(s.seed, 5, i);
    append_random_ids(h, sample_length(s.input, rng), s.vocab, rng);  // the user's message
    bench_request r;
    r.group = c;
    r.prompt_ids = h;
    r.prompt_len = static_cast<uint32_t>(h.size());
    r.max_tokens = r.expected_output_len = sample_length(s.output, rng);
    out.push_back(std::move(r));
    append_random_ids(h, sample_length(s.answer, rng), s.vocab, rng);  // its answer
    if (++turn[c] == turns) {
      turn[c] = 0;
      ++round[c];
    }
  }
  return out;
}

std::vector<bench_request> rag_workload(const rag_spec& s) {
  const uint32_t pool = std::max<uint32_t>(1, s.pool);
  const uint32_t k = std::clamp<uint32_t>(s.docs, 1, pool);
  std::vector<std::vector<token_id>> docs(pool);
  for (uint32_t d = 0; d < pool; ++d) {
    auto rng = rng_for(s.seed, 7, d);
    append_random_ids(docs[d], std::max<uint32_t>(1, s.doc_len), s.vocab, rng);
  }
  std::vector<token_id> system;
  {
    auto rng = rng_for(s.seed, 6, 0);
    append_random_ids(system, std::max<uint32_t>(1, s.system_len), s.vocab, rng);
  }
  std::vector<uint32_t> order(pool);
  std::vector<bench_request> out;
  out.reserve(s.requests);
  for (size_t i = 0; i < s.requests; ++i) {
    auto rng = rng_for(s.seed, 8, i);
    for (uint32_t d = 0; d < pool; ++d)
      order[d] = d;
    // The first k of a shuffle: k distinct documents in random order.
    for (uint32_t d = 0; d < k; ++d)
      std::swap(order[d], order[d + rng() % (pool - d)]);
    bench_request r;
    r.group = order[0];
    auto add = [&](std::span<const token_id> part) {
      r.prompt_ids.insert(r.prompt_ids.end(), part.begin(), part.end());
      r.segment_ends.push_back(static_cast<uint32_t>(r.prompt_ids.size()));
    };
    add(system);
    for (uint32_t d = 0; d < k; ++d)
      add(docs[order[d]]);
    std::vector<token_id> question;
    append_random_ids(question, sample_length(s.question, rng), s.vocab, rng);
    add(question);
    r.prompt_len = static_cast<uint32_t>(r.prompt_ids.size());
    r.max_tokens = r.expected_output_len = sample_length(s.output, rng);
    if (s.chat) {
      uint32_t begin = 0;
      for (auto end : r.segment_ends) {
        r.chat_parts.push_back(
            ids_as_words(std::span<const token_id>(r.prompt_ids.data() + begin, end - begin)));
        begin = end;
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string ids_as_words(std::span<const token_id> ids) {
  static constexpr std::string_view words[] = {
      "able", "acid", "aged", "also", "area", "army", "away", "baby", "back", "ball", "band",
      "bank", "base", "bath", "bear", "beat", "been", "beer", "bell", "belt", "best", "bill",
      "bird", "blow", "blue", "boat", "body", "bomb", "bond", "bone", "book", "boom", "born",
      "boss", "both", "bowl", "bulk", "burn", "bush", "busy", "call", "calm", "came", "camp",
      "card", "care", "case", "cash", "cast", "cell", "chat", "chip", "city", "club", "coal",
      "coat", "code", "cold", "come", "cook", "cool", "cope", "copy", "core"};
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) {
    if (k) out += ' ';
    out += words[static_cast<uint32_t>(ids[k]) % std::size(words)];
  }
  return out;
}

std::optional<double> metric_sum(std::string_view exposition, std::string_view name) {
  std::optional<double> sum;
  while (!exposition.empty()) {
    const size_t nl = exposition.find('\n');
    std::string_view line = exposition.substr(0, nl);
    exposition = nl == std::string_view::npos ? std::string_view() : exposition.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    // name, then {labels} or a space; a label value may hold '}' or spaces when quoted.
    size_t k = line.find_first_of("{ ");
    if (k == std::string_view::npos || line.substr(0, k) != name) continue;
    if (line[k] == '{') {
      bool quoted = false;
      for (++k; k < line.size(); ++k) {
        const char c = line[k];
        if (quoted && c == '\\') {
          ++k;
        } else if (c == '"') {
          quoted = !quoted;
        } else if (!quoted && c == '}') {
          break;
        }
      }
      if (k >= line.size()) continue;  // unterminated labels: not a sample
      ++k;
    }
    const std::string value(line.substr(k));
    char* end = nullptr;
    const double v = std::strtod(value.c_str(), &end);
    if (end == value.c_str()) continue;
    sum = sum.value_or(0) + v;
  }
  return sum;
}

result<std::vector<sharegpt_entry>> parse_sharegpt(const std::string& text,
                                                   const std::string& what) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded())
    return bad_file(what, "not valid JSON (a ShareGPT file is a JSON array of conversations)");
  if (!j.is_array())
    return bad_file(what, fmt::format("the top level is a JSON {}, not an array of conversations",
                                      j.type_name()));
  std::vector<sharegpt_entry> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& e = j[i];
    if (!e.is_object())
      return bad_file(what, fmt::format("entry {} is a JSON {}, not an object", i, e.type_name()));
    auto c = e.find("conversations");
    if (c == e.end() || !c->is_array())
      return bad_file(what, fmt::format("entry {} has no \"conversations\" array", i));
    std::vector<std::pair<std::string, std::string>> turns;
    for (size_t t = 0; t < c->size(); ++t) {
      const auto& turn = (*c)[t];
      auto from = turn.is_object() ? turn.find("from") : turn.end();
      auto value = turn.is_object() ? turn.find("value") : turn.end();
      if (!turn.is_object() || from == turn.end() || !from->is_string() || value == turn.end() ||
          !value->is_string())
        return bad_file(what, fmt::format("entry {}, turn {}: expected an object with string "
                                          "\"from\" and \"value\"",
                                          i, t));
      turns.emplace_back(from->get<std::string>(), value->get<std::string>());
    }
    if (turns.size() < 2) continue;
    for (size_t t = 0; t + 1 < turns.size(); ++t) {
      if (!is_human(turns[t].first)) continue;
      if (is_model(turns[t + 1].first))
        out.push_back({i, std::move(turns[t].second), std::move(turns[t + 1].second)});
      break;
    }
  }
  return out;
}

result<std::vector<sharegpt_entry>> read_sharegpt(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return error_info{errc::invalid_request, fmt::format("{}: cannot read the file", path)};
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return error_info{errc::invalid_request, fmt::format("{}: read error", path)};
  return parse_sharegpt(buf.str(), path);
}

result<std::vector<bench_request>> sharegpt_workload(const sharegpt_spec& s,
                                                     const tokenize_fn& tokenize) {
  auto entries = read_sharegpt(s.path);
  if (!entries) return entries.error();
  return select_sharegpt(*entries, s, tokenize);
}

result<std::vector<bench_request>> select_sharegpt(const std::vector<sharegpt_entry>& entries,
                                                   const sharegpt_spec& s,
                                                   const tokenize_fn& tokenize) {
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(s.seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bench_request> out;
  for (size_t k : order) {
    if (out.size() >= s.requests) break;
    const auto& e = entries[k];
    auto prompt = tokenize(e.prompt);
    if (!prompt)
      return error_info{prompt.error().code, fmt::format("{}: entry {}: tokenize: {}", s.path,
                                                         e.index, prompt.error().message)};
    auto answer = tokenize(e.answer);
    if (!answer)
      return error_info{answer.error().code, fmt::format("{}: entry {}: tokenize: {}", s.path,
                                                         e.index, answer.error().message)};
    auto prompt_len = static_cast<uint32_t>(prompt->size());
    auto answer_len = static_cast<uint32_t>(answer->size());
    uint32_t output_len = s.fixed_output_len ? s.fixed_output_len : answer_len;
    if (prompt_len < 4 || (s.fixed_output_len == 0 && answer_len < 4)) continue;
    if (s.max_len && uint64_t{prompt_len} + output_len > s.max_len) continue;
    bench_request r;
    r.has_text = true;
    r.prompt_text = e.prompt;
    r.prompt_len = prompt_len;
    r.max_tokens = output_len;
    r.expected_output_len = output_len;
    out.push_back(std::move(r));
  }
  if (out.empty())
    return error_info{
        errc::invalid_request,
        fmt::format("{}: none of its {} conversations is usable (a human turn followed by a "
                    "model turn, each of 4+ tokens{})",
                    s.path, entries.size(),
                    s.max_len ? fmt::format(", {} tokens at most together", s.max_len) : "")};
  return out;
}

std::optional<double> request_tpot_ms(const request_result& r) {
  if (r.output_tokens < 2) return std::nullopt;
  return (r.e2e_ms - r.ttft_ms) / static_cast<double>(r.output_tokens - 1);
}

bool meets_slo(const request_result& r, const slo_spec& slo) {
  if (!r.ok) return false;
  if (slo.ttft_ms && r.ttft_ms > *slo.ttft_ms) return false;
  if (slo.tpot_ms) {
    auto tpot = request_tpot_ms(r);
    if (tpot && *tpot > *slo.tpot_ms) return false;
  }
  if (slo.itl_ms && !r.itl_ms.empty()) {
    auto s = summarize(r.itl_ms);
    if (s.p99 > *slo.itl_ms) return false;
  }
  return true;
}

delivery_check check_delivery(const std::vector<delivered_token>& delivered, uint32_t end) {
  delivery_check c;
  std::map<uint32_t, token_id> first;  // the id first delivered at each index
  for (const auto& t : delivered) {
    auto [it, fresh] = first.emplace(t.index, t.id);
    if (fresh) continue;
    ++c.duplicated;
    if (it->second != t.id) ++c.conflicting;
  }
  // Every delivered index is below span, so the gaps are span minus the distinct indices.
  uint64_t span = end;
  if (!first.empty()) span = std::max<uint64_t>(span, uint64_t{first.rbegin()->first} + 1);
  c.missing = static_cast<uint32_t>(std::min<uint64_t>(span - first.size(), UINT32_MAX));
  return c;
}

nlohmann::ordered_json percentiles_json(const std::vector<double>& samples) {
  auto s = summarize(samples);
  return {{"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}, {"mean", s.mean}};
}

nlohmann::ordered_json make_report(const std::vector<request_result>& results, double duration_s,
                                   const slo_spec& slo) {
  std::vector<double> ttft, itl, tpot, e2e;
  std::vector<std::string> stage_order;
  std::map<std::string, double> stage_sum;
  uint64_t prompt_tokens = 0, output_tokens = 0;
  size_t completed = 0, good = 0;
  std::string first_error;
  std::map<std::string, size_t> errors;
  for (const auto& r : results) {
    if (!r.ok) {
      if (first_error.empty()) first_error = r.error;
      ++errors[r.error_code.empty() ? "other" : r.error_code];
      continue;
    }
    ++completed;
    if (meets_slo(r, slo)) ++good;
    ttft.push_back(r.ttft_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    e2e.push_back(r.e2e_ms);
    if (auto t = request_tpot_ms(r)) tpot.push_back(*t);
    prompt_tokens += r.prompt_tokens;
    output_tokens += r.output_tokens;
    for (const auto& s : r.stages) {
      auto [it, fresh] = stage_sum.try_emplace(s.name, 0.0);
      if (fresh) stage_order.push_back(s.name);
      it->second += s.ms;
    }
  }
  double secs = duration_s > 0 ? duration_s : std::numeric_limits<double>::min();
  auto per_s = [&](double v) { return duration_s > 0 ? v / secs : 0.0; };
  auto opt = [](const std::optional<double>& v) -> nlohmann::ordered_json {
    return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
  };
  nlohmann::ordered_json j;
  j["requests"] = results.size();
  j["completed"] = completed;
  j["failed"] = results.size() - completed;
  if (!first_error.empty()) j["first_error"] = first_error;
  // Refused by admission control (overloaded, HTTP 429): load shed, not a failure to serve.
  const size_t rejected = errors.count("overloaded") ? errors["overloaded"] : 0;
  j["rejected"] = rejected;
  j["rejected_fraction"] =
      results.empty() ? 0.0 : static_cast<double>(rejected) / static_cast<double>(results.size());
  j["errors"] = errors;
  j["duration_s"] = duration_s;
  j["prompt_tokens"] = prompt_tokens;
  j["output_tokens"] = output_tokens;
  j["ttft_ms"] = percentiles_json(ttft);
  j["itl_ms"] = percentiles_json(itl);
  j["tpot_ms"] = percentiles_json(tpot);
  j["e2e_ms"] = percentiles_json(e2e);
  j["requests_per_s"] = per_s(static_cast<double>(completed));
  j["output_tokens_per_s"] = per_s(static_cast<double>(output_tokens));
  j["total_tokens_per_s"] = per_s(static_cast<double>(prompt_tokens + output_tokens));
  j["goodput"] = {
      {"requests_per_s", per_s(static_cast<double>(good))},
      {"fraction",
       results.empty() ? 0.0 : static_cast<double>(good) / static_cast<double>(results.size())},
      {"slo",
       {{"ttft_ms", opt(slo.ttft_ms)},
        {"tpot_ms", opt(slo.tpot_ms)},
        {"itl_ms", opt(slo.itl_ms)}}}};
  nlohmann::ordered_json stages = nlohmann::ordered_json::object();
  for (const auto& name : stage_order)
    stages[name] = stage_sum[name] / static_cast<double>(completed);
  j["ttft_stages_mean_ms"] = std::move(stages);
  return j;
}

std::vector<itl_part> split_itl(std::span<const step_record> steps,
                                std::span<const double> itl_ms) {
  std::vector<itl_part> out;
  for (size_t i = 1; i < steps.size(); ++i) {
    const auto& a = steps[i - 1];
    const auto& b = steps[i];
    if (a.step_start_ns == 0 || b.step_start_ns == 0) continue;  // a prefill's token
    if (b.index != a.index + 1 || b.index == 0 || b.index - 1 >= itl_ms.size()) continue;
    const double gap = itl_ms[b.index - 1];
    if (gap <= 0) continue;  // inside a chunk: its gap is the chunk's first token's
    itl_part p;
    p.gap_ms = gap;
    p.step_ms = static_cast<double>(b.step_end_ns - b.step_start_ns) / 1e6;
    p.between_ms = static_cast<double>(b.step_start_ns - a.step_end_ns) / 1e6;
    p.held_ms =
        static_cast<double>((b.released_ns - b.step_end_ns) - (a.released_ns - a.step_end_ns)) /
        1e6;
    p.deliver_ms = gap - static_cast<double>(b.released_ns - a.released_ns) / 1e6;
    out.push_back(p);
  }
  return out;
}

}  // namespace tokenmill::workload
