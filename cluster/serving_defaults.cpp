#include "cluster/serving_defaults.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <string>

#include <fmt/format.h>

namespace tokenmill {
namespace {

error_info bad(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

uint64_t ceil_div(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

result<uint64_t> parse_memory_size(std::string_view text) {
  auto fail = [&] {
    return bad(fmt::format("'{}' is not a memory size; expected {}", text, memory_size_expected));
  };
  std::string_view s = text;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  size_t digits = 0;
  bool dot = false;
  while (digits < s.size() &&
         (std::isdigit(static_cast<unsigned char>(s[digits])) || (s[digits] == '.' && !dot))) {
    dot = dot || s[digits] == '.';
    ++digits;
  }
  if (digits == 0 || (digits == 1 && dot)) return fail();
  // from_chars for double is in GCC 12's libstdc++.
  double number = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + digits, number);
  if (ec != std::errc{} || end != s.data() + digits) return fail();
  std::string unit = lower(s.substr(digits));
  while (!unit.empty() && unit.front() == ' ')
    unit.erase(unit.begin());
  double scale = 0;
  if (unit.empty() || unit == "b") scale = 1;
  const char* prefixes = "kmgt";
  for (int i = 0; i < 4; ++i) {
    std::string p(1, prefixes[i]);
    double binary = std::pow(1024.0, i + 1), decimal = std::pow(1000.0, i + 1);
    if (unit == p || unit == p + "ib") scale = binary;
    if (unit == p + "b") scale = decimal;
  }
  if (scale == 0) return fail();
  double bytes = std::floor(number * scale);
  if (!(bytes >= 1))
    return bad(fmt::format("'{}' is {} bytes; a memory size must be at least 1 byte", text,
                           static_cast<uint64_t>(bytes)));
  if (bytes >= 9.2e18) return bad(fmt::format("'{}' is too large for a memory size", text));
  return static_cast<uint64_t>(bytes);
}

std::string format_memory_size(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (uint64_t{1} << 30)) return fmt::format("{:.2f} GiB", b / (1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return fmt::format("{:.1f} MiB", b / (1 << 20));
  if (bytes >= (uint64_t{1} << 10)) return fmt::format("{:.1f} KiB", b / (1 << 10));
  return fmt::format("{} B", bytes);
}

serve_topology choose_topology(uint32_t cores, bool host_compute,
                               std::optional<uint32_t> prefill_workers,
                               std::optional<uint32_t> decode_workers,
                               std::optional<uint32_t> threads, bool chunk_given,
                               std::optional<bool> shared_pool) {
  cores = std::max(1u, cores);
  serve_topology t;
  t.decode_workers = decode_workers.value_or(1);
  t.prefill_workers = prefill_workers.value_or(1);
  const uint32_t workers = std::max(1u, t.prefill_workers + t.decode_workers);
  const bool threads_given = threads && *threads > 0;
  t.shared_pool = host_compute && workers > 1 && shared_pool.value_or(true);
  if (t.shared_pool)
    t.threads = threads_given ? *threads : cores;
  else
    t.threads = threads_given ? *threads : std::max(1u, cores / workers);
  if (host_compute && t.prefill_workers == 0 && !chunk_given)
    t.local_prefill_chunk = aggregated_prefill_chunk;
  return t;
}

uint64_t default_kv_memory(const kv_demand& d, uint64_t physical_bytes, uint64_t weight_bytes) {
  if (d.block_bytes == 0 || d.block_tokens == 0) return 0;
  const uint64_t seq_blocks = std::max<uint64_t>(1, ceil_div(d.max_context, d.block_tokens));
  const uint64_t useful_blocks =
      seq_blocks * (uint64_t{d.decode_workers} * std::max(1u, d.decode_max_batch) +
                    uint64_t{d.prefill_workers} * std::max(1u, d.prefill_max_seqs));
  const uint64_t floor_blocks = seq_blocks * (uint64_t{d.decode_workers} + d.prefill_workers);
  uint64_t bytes = useful_blocks * d.block_bytes;
  if (physical_bytes > 0) {
    uint64_t left = physical_bytes > weight_bytes ? physical_bytes - weight_bytes : 0;
    bytes = std::min(bytes, left / 4);
  }
  return std::max(bytes, floor_blocks * d.block_bytes);
}

result<kv_pool_plan> plan_kv_pools(const kv_demand& d, std::optional<uint64_t> budget,
                                   uint64_t physical_bytes, uint64_t weight_bytes) {
  if (d.block_bytes == 0 || d.block_tokens == 0)
    return bad("the KV layout has empty blocks (0 bytes or 0 tokens per block)");
  constexpr uint64_t max_blocks = uint64_t{1} << 24;  // the CLI's bound on a pool
  kv_pool_plan plan;
  plan.default_budget = !budget.has_value();
  plan.budget_bytes = budget ? *budget : default_kv_memory(d, physical_bytes, weight_bytes);
  const uint64_t seq_blocks = std::max<uint64_t>(1, ceil_div(d.max_context, d.block_tokens));
  const uint64_t seq_bytes = seq_blocks * d.block_bytes;

  // Roles with fixed pools take theirs first; the others share the rest by what they use
  // at once.
  uint64_t fixed_bytes = 0;
  if (d.prefill_blocks)
    fixed_bytes += uint64_t{*d.prefill_blocks} * d.prefill_workers * d.block_bytes;
  if (d.decode_blocks) fixed_bytes += uint64_t{*d.decode_blocks} * d.decode_workers * d.block_bytes;
  const uint64_t share_p =
      d.prefill_blocks ? 0 : uint64_t{d.prefill_workers} * std::max(1u, d.prefill_max_seqs);
  const uint64_t share_d =
      d.decode_blocks ? 0 : uint64_t{d.decode_workers} * std::max(1u, d.decode_max_batch);
  const uint64_t sharing_workers =
      (d.prefill_blocks ? 0 : d.prefill_workers) + (d.decode_blocks ? 0 : d.decode_workers);
  uint64_t rest = plan.budget_bytes > fixed_bytes ? plan.budget_bytes - fixed_bytes : 0;
  if (sharing_workers > 0 && plan.default_budget)
    rest = std::max(rest, sharing_workers * seq_bytes);  // the default never starves a worker
  const uint64_t rest_blocks = rest / d.block_bytes;
  auto share = [&](uint64_t weight_per_worker, uint64_t total_weight) -> uint64_t {
    if (total_weight == 0) return 0;
    return std::min(max_blocks, rest_blocks * weight_per_worker / total_weight);
  };
  const uint64_t total_weight = share_p + share_d;
  uint64_t p_blocks =
      d.prefill_blocks ? *d.prefill_blocks : share(std::max(1u, d.prefill_max_seqs), total_weight);
  uint64_t d_blocks =
      d.decode_blocks ? *d.decode_blocks : share(std::max(1u, d.decode_max_batch), total_weight);
  auto too_small = [&](const char* role, uint64_t blocks) -> std::optional<error_info> {
    if (blocks >= seq_blocks) return std::nullopt;
    return bad(fmt::format(
        "KV memory {} gives each {} worker {} blocks of {} ({} tokens per block), less than "
        "one full-context sequence ({} tokens, {} blocks); {} prefill and {} decode workers "
        "need at least {}",
        format_memory_size(plan.budget_bytes), role, blocks, format_memory_size(d.block_bytes),
        d.block_tokens, d.max_context, seq_blocks, d.prefill_workers, d.decode_workers,
        format_memory_size(fixed_bytes + sharing_workers * seq_bytes)));
  };
  if (d.prefill_workers > 0 && !d.prefill_blocks)
    if (auto e = too_small("prefill", p_blocks)) return *e;
  if (d.decode_workers > 0 && !d.decode_blocks)
    if (auto e = too_small("decode", d_blocks)) return *e;
  plan.prefill_blocks = d.prefill_workers > 0 ? static_cast<uint32_t>(p_blocks) : 0;
  plan.decode_blocks = d.decode_workers > 0 ? static_cast<uint32_t>(d_blocks) : 0;

  const uint64_t pools = d.block_bytes * (uint64_t{plan.prefill_blocks} * d.prefill_workers +
                                          uint64_t{plan.decode_blocks} * d.decode_workers);
  if (physical_bytes > 0 && static_cast<double>(pools) > 0.8 * static_cast<double>(physical_bytes))
    return bad(fmt::format(
        "KV pools need {} ({} per block; {} prefill x {} blocks, {} decode x {} blocks) but this "
        "machine has {} of memory: lower the KV memory or the block counts",
        format_memory_size(pools), format_memory_size(d.block_bytes), d.prefill_workers,
        plan.prefill_blocks, d.decode_workers, plan.decode_blocks,
        format_memory_size(physical_bytes)));
  plan.summary = fmt::format(
      "KV memory {}{}: {} decode x {} blocks ({} tokens), {} prefill x {} blocks ({} tokens); "
      "{} per block, pages touched as blocks are first used",
      format_memory_size(pools), plan.default_budget ? " (default)" : "", d.decode_workers,
      plan.decode_blocks, uint64_t{plan.decode_blocks} * d.block_tokens, d.prefill_workers,
      plan.prefill_blocks, uint64_t{plan.prefill_blocks} * d.block_tokens,
      format_memory_size(d.block_bytes));
  return plan;
}

uint64_t physical_memory_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

}  // namespace tokenmill
