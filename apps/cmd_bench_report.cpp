// `tokenmill bench`'s output: the --record lines and the human-readable table (the JSON
// report itself is workload::make_report's).
#include "apps/bench_report.hpp"

#include <cctype>
#include <chrono>
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "common/clock.hpp"

namespace tokenmill::app {

using ojson = nlohmann::ordered_json;
namespace wl = tokenmill::workload;

namespace {

/// FNV-1a 64 of a prompt (its token ids' bytes, or its text), to tell prompts apart in records.
uint64_t prompt_hash(const wl::bench_request& r) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](const void* p, size_t len) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t k = 0; k < len; ++k)
      h = (h ^ b[k]) * 0x100000001b3ull;
  };
  if (r.has_text)
    mix(r.prompt_text.data(), r.prompt_text.size());
  else
    mix(r.prompt_ids.data(), r.prompt_ids.size() * sizeof(token_id));
  return h;
}

std::string fmt_ms(double v) {
  return fmt::format("{:.2f}", v);
}

}  // namespace

double as_decimal(float v) {
  return std::round(static_cast<double>(v) * 1e6) / 1e6;
}

void write_records(std::ostream& out, const std::vector<wl::bench_request>& measured,
                   const std::vector<wl::request_result>& results,
                   const std::vector<wl::client_record>& records,
                   const std::vector<wl::delivery_check>& checks,
                   const std::function<sampling_params(size_t)>& sampling_of) {
  // The steady clock mapped once onto the Unix epoch, in µs.
  const int64_t epoch_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count() -
                           now_ns();
  auto unix_us = [&](int64_t t) { return (t + epoch_ns) / 1000; };
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    const auto& q = measured[i];
    auto sp = sampling_of(i);
    ojson j;
    j["i"] = i;
    j["prompt_len"] = q.prompt_len;
    j["prompt_hash"] = fmt::format("{:016x}", prompt_hash(q));
    j["max_tokens"] = q.max_tokens;
    j["seed"] = sp.seed;
    j["temperature"] = as_decimal(sp.temperature);
    j["sent_unix_us"] = unix_us(r.sent_ns);
    j["first_token_unix_us"] = r.recv_ns.empty() ? ojson(nullptr) : ojson(unix_us(r.recv_ns[0]));
    j["end_unix_us"] = unix_us(r.end_ns);
    j["outcome"] = r.outcome;
    j["error"] = results[i].ok ? ojson(nullptr) : ojson(results[i].error);
    j["completion_tokens"] = r.completion_tokens;
    j["prefill_worker"] = r.prefill_worker;
    j["decode_worker"] = r.decode_worker;
    j["migrations"] = r.migrations;
    j["migration_reasons"] = r.migration_reasons;
    j["duplicated"] = checks[i].duplicated;
    j["missing"] = checks[i].missing;
    auto toks = ojson::array();
    for (size_t k = 0; k < r.tokens.size(); ++k)
      toks.push_back({r.tokens[k].index, r.tokens[k].id, (r.recv_ns[k] - r.sent_ns) / 1000});
    j["tokens"] = std::move(toks);
    out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
}

void print_table(const nlohmann::ordered_json& j) {
  auto num = [&](const char* k) {
    return j.contains(k) && j[k].is_number() ? j[k].get<double>() : 0.0;
  };
  std::string rate = j["rate"].is_null()     ? "-"
                     : j["rate"].is_string() ? "inf"
                                             : fmt::format("{:g}", j["rate"].get<double>());
  fmt::print("============ tokenmill bench ============\n");
  fmt::print(
      "{:<34}{}\n", "Backend / workload:",
      fmt::format("{} / {}", j["backend"].get<std::string>(), j["workload"].get<std::string>()));
  if (j["mode"] == "concurrency")
    fmt::print("{:<34}{}\n", "Concurrency (closed loop):", j["concurrency"].get<uint32_t>());
  else
    fmt::print("{:<34}{} req/s (burstiness {:g}, max concurrency {})\n", "Request rate:", rate,
               j["burstiness"].get<double>(), j["max_concurrency"].get<uint32_t>());
  fmt::print("{:<34}{}\n", "Successful requests:", j["completed"].get<size_t>());
  fmt::print("{:<34}{}\n", "Failed requests:", j["failed"].get<size_t>());
  if (j.contains("rejected") && j["rejected"].get<size_t>() > 0)
    fmt::print("{:<34}{} ({:.1f}% of requests)\n",
               "  of them rejected (overloaded):", j["rejected"].get<size_t>(),
               100 * num("rejected_fraction"));
  fmt::print("{:<34}{:.3f}\n", "Duration (s):", num("duration_s"));
  fmt::print("{:<34}{}\n", "Prompt tokens:", j["prompt_tokens"].get<uint64_t>());
  fmt::print("{:<34}{}\n", "Output tokens:", j["output_tokens"].get<uint64_t>());
  fmt::print("{:<34}{:.2f}\n", "Request throughput (req/s):", num("requests_per_s"));
  fmt::print("{:<34}{:.2f}\n", "Output throughput (tok/s):", num("output_tokens_per_s"));
  fmt::print("{:<34}{:.2f}\n", "Total throughput (tok/s):", num("total_tokens_per_s"));
  const auto& g = j["goodput"];
  bool any_slo = false;
  for (const auto& [k, v] : g["slo"].items())
    any_slo = any_slo || !v.is_null();
  if (any_slo)
    fmt::print("{:<34}{:.2f} ({:.1f}% of requests within {})\n",
               "Goodput (req/s):", g["requests_per_s"].get<double>(),
               100 * g["fraction"].get<double>(), g["slo"].dump());
  if (j.contains("chunks") && j["chunks"].is_object()) {
    const auto& c = j["chunks"];
    fmt::print("{:<34}{} of {} ({:.1f}%), {} recomputed\n",
               "Chunk cache tokens reused:", c["hit_tokens"].get<uint64_t>(),
               c["lookup_tokens"].get<uint64_t>(), 100 * c["hit_fraction"].get<double>(),
               c["recomputed_tokens"].get<uint64_t>());
  }
  if (j["mode"] == "rate")
    fmt::print("{:<34}{}\n", "Late dispatches:", j["late_dispatches"].get<size_t>());
  fmt::print("{:<12}{:>12}{:>12}{:>12}{:>12}\n", "ms", "mean", "p50", "p90", "p99");
  for (const char* k : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    const auto& s = j[k];
    std::string name(k);
    name = name.substr(0, name.size() - 3);
    for (auto& c : name)
      c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    fmt::print("{:<12}{:>12}{:>12}{:>12}{:>12}\n", name, fmt_ms(s["mean"].get<double>()),
               fmt_ms(s["p50"].get<double>()), fmt_ms(s["p90"].get<double>()),
               fmt_ms(s["p99"].get<double>()));
  }
  if (!j["ttft_stages_mean_ms"].empty()) {
    fmt::print("Mean TTFT breakdown (ms):\n");
    for (const auto& [name, ms] : j["ttft_stages_mean_ms"].items())
      fmt::print("  {:<24}{:>10.3f}\n", name, ms.get<double>());
  }
  if (j.contains("itl_over_step"))
    fmt::print("{:<34}p50 {:.4f}  p99 {:.4f}\n",
               "ITL / configured step:", j["itl_over_step"]["p50"].get<double>(),
               j["itl_over_step"]["p99"].get<double>());
  if (j.contains("itl_tail")) {
    const auto& t = j["itl_tail"];
    const auto& m = t["mean_ms"];
    fmt::print(
        "{:<34}{} of {} gaps above {:.2f} ms; mean gap {:.3f} = step {:.3f} + between "
        "steps {:.3f} + router hold {:.3f} + delivery {:.3f}\n",
        "ITL tail (ms):", t["tail_gaps"].get<size_t>(), t["gaps"].get<size_t>(),
        t["threshold_ms"].get<double>(), m["gap"].get<double>(), m["step"].get<double>(),
        m["between_steps"].get<double>(), m["router_hold"].get<double>(),
        m["delivery"].get<double>());
  }
  if (j.contains("ttft_runtime_share_ms"))
    fmt::print("{:<34}p50 {:.3f}  mean {:.3f}\n",
               "TTFT minus modelled prefill (ms):", j["ttft_runtime_share_ms"]["p50"].get<double>(),
               j["ttft_runtime_share_ms"]["mean"].get<double>());
  if (j["duplicated"].is_number())
    fmt::print("{:<34}{} / {}\n",
               "Token index duplicated / missing:", j["duplicated"].get<size_t>(),
               j["missing"].get<size_t>());
  if (j.contains("first_error"))
    fmt::print("{:<34}{}\n", "First error:", j["first_error"].get<std::string>());
  fmt::print("=========================================\n");
}

}  // namespace tokenmill::app
