// `tokenmill bench`: a load generator in the manner of vLLM's benchmark_serving and
// SGLang's bench_serving. Requests come from a workload (frontend/workload.hpp), go out
// either closed-loop (--concurrency C: C streams back to back) or open-loop (--rate R:
// Poisson or gamma arrivals released by a dispatcher to a pool of worker threads), over
// Cap'n Proto RPC or the OpenAI-compatible HTTP API, and every figure is measured at the
// client. The clients are synchronous and one per thread, so each worker thread owns its
// own connection.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/bench_report.hpp"
#include "apps/client_options.hpp"
#include "apps/commands.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "frontend/client.hpp"
#include "frontend/connection_pool.hpp"
#include "frontend/http_client.hpp"
#include "frontend/workload.hpp"

namespace tokenmill::app {
namespace {

namespace wl = tokenmill::workload;
using ojson = nlohmann::ordered_json;

struct bench_opts {
  std::string connect = "127.0.0.1:7700";
  std::string backend = "rpc";
  std::string client_loop = "thread";  ///< thread: a thread per stream; one: one event loop
  client_options security;
  std::string rate;  ///< "R" or "inf"; empty: concurrency mode
  uint32_t concurrency = 0;
  uint32_t max_concurrency = 256;
  double burstiness = 1;
  uint32_t requests = 32;
  uint32_t warmup = 0;
  uint32_t input_len = 128;
  uint32_t output_len = 64;
  double range_ratio = 0;
  std::string workload = "random";
  uint32_t prefixes = 4;
  uint32_t users = 8;
  uint32_t prefix_len = 512;
  uint32_t conversations = 8;  ///< multi-turn: chats
  uint32_t turns = 4;          ///< multi-turn: turns per chat
  uint32_t answer_len = 0;     ///< multi-turn: tokens of each earlier answer (0: --output-len)
  std::string dataset;
  uint32_t pool = 16;                   ///< rag: documents in the pool
  uint32_t docs = 4;                    ///< rag: documents per request
  uint32_t doc_len = 256;               ///< rag: tokens per document
  bool rag_plain = false;               ///< rag: send the same prompts unsegmented (a baseline)
  std::string rag_api = "completions";  ///< rag over http: completions or chat
  double slo_ttft_ms = 0, slo_tpot_ms = 0, slo_itl_ms = 0;
  bool ignore_eos = true;
  uint32_t vocab_size = 0;  ///< 0: the model's
  uint64_t seed = 1;
  float temperature = 0;   ///< sampling temperature of every request (0 = greedy)
  uint64_t seed_base = 0;  ///< with --seed-base: request i samples with seed seed_base + i
  std::string record;      ///< --record FILE: one JSON line per measured request
  double timeout_s = 600;
  bool json = false;
  std::string output;
  bool no_progress = false;
  double step_ms = 0;               ///< configured decode step, for the overhead ratio
  double prefill_us_per_token = 0;  ///< configured prefill cost, for the runtime share
};

/// What the bench learns about the served model before it builds the workload.
struct served_model {
  std::string name;
  uint32_t vocab_size = 0;   ///< 0: unknown
  uint32_t max_context = 0;  ///< 0: unknown
};

// ---- progress ------------------------------------------------------------------------

/// A one-line progress bar on stderr, redrawn every 200 ms while a phase runs.
class progress {
 public:
  progress(bool on, wl::connection_pool& pool, size_t base, size_t total, std::string label)
      : on_(on), pool_(pool), base_(base), total_(total), label_(std::move(label)) {
    if (!on_) return;
    start_ = now_ns();
    thread_ = std::thread([this] {
      std::unique_lock lock(m_);
      while (!cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return done_; }))
        draw();
    });
  }
  ~progress() {
    if (!on_) return;
    {
      std::lock_guard lock(m_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
    draw();
    std::fputc('\n', stderr);
  }

 private:
  void draw() {
    size_t done = std::min(total_, pool_.finished() - std::min(base_, pool_.finished()));
    double secs = static_cast<double>(now_ns() - start_) / 1e9;
    constexpr int width = 30;
    int filled = total_ ? static_cast<int>(width * done / total_) : width;
    std::fprintf(stderr, "\r%s [%s%s] %zu/%zu  %.1f s  %.1f req/s ", label_.c_str(),
                 std::string(static_cast<size_t>(filled), '=').c_str(),
                 std::string(static_cast<size_t>(width - filled), ' ').c_str(), done, total_, secs,
                 secs > 0 ? static_cast<double>(done) / secs : 0.0);
    std::fflush(stderr);
  }

  bool on_;
  wl::connection_pool& pool_;
  size_t base_, total_;
  std::string label_;
  int64_t start_ = 0;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// ---- helpers -------------------------------------------------------------------------

int fail(const std::string& msg) {
  std::fprintf(stderr, "tokenmill bench: %s\n", msg.c_str());
  return 1;
}

/// "inf" / "infinity" or a positive finite number.
std::optional<double> parse_rate(const std::string& s) {
  if (s == "inf" || s == "infinity" || s == "Inf") return std::numeric_limits<double>::infinity();
  try {
    size_t used = 0;
    double v = std::stod(s, &used);
    if (used != s.size() || !(v > 0) || !std::isfinite(v)) return std::nullopt;
    return v;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

/// The model's name, vocabulary and context over HTTP: GET /v1/models.
served_model http_model_info(http_client& c) {
  served_model m;
  auto r = c.request("GET", "/v1/models", {}, {}, {}, 10);
  if (!r || r->status != 200) return m;
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array() || j["data"].empty()) return m;
  const auto& d = j["data"][0];
  if (!d.is_object()) return m;
  if (auto id = d.find("id"); id != d.end() && id->is_string()) m.name = id->get<std::string>();
  m.max_context = wl::uint_field(d, "max_model_len");
  m.vocab_size = wl::uint_field(d, "vocab_size");
  return m;
}

/// POST /tokenize {"prompt": text} -> {"tokens": [...]}.
result<std::vector<token_id>> http_tokenize(http_client& c, const std::string& text) {
  auto r = c.request("POST", "/tokenize", nlohmann::json{{"prompt", text}}.dump());
  if (!r) return r.error();
  if (r->status != 200)
    return error_info{errc::invalid_request, "/tokenize: " + wl::http_error_text(*r)};
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array())
    return error_info{errc::internal, "/tokenize answered without a \"tokens\" array"};
  std::vector<token_id> out;
  for (const auto& t : j["tokens"]) {
    if (!t.is_number_integer())
      return error_info{errc::internal, "/tokenize answered a token that is not an integer"};
    out.push_back(t.get<token_id>());
  }
  return out;
}

constexpr const char* bench_footer =
    R"(Modes: --concurrency C keeps C requests in flight (closed loop); --rate R releases
requests at Poisson arrival times (gamma with --burstiness) to worker threads, at most
--max-concurrency in flight; a request that finds no free worker is counted in
late_dispatches. --rate inf sends everything at once.
Workloads: random (synthetic token ids, --input-len/--output-len, --range-ratio),
shared-prefix (--prefixes N system prompts of --prefix-len tokens, each request one of
them plus a fresh --input-len suffix; without an explicit --requests, N x --users requests),
multi-turn (--conversations N chats of --turns T turns: turn t sends the chat's system prompt
of --prefix-len tokens, its t earlier --input-len user messages and --answer-len synthetic
answers, then a new user message; chats interleaved; without --requests, N x T requests),
sharegpt (--dataset FILE; --output-len, when given, replaces the answers' lengths),
rag (chunk reuse: a system prompt of --prefix-len tokens, --docs documents of --doc-len
tokens drawn from a pool of --pool and shuffled, and an --input-len question, sent as
segments; --rag-api chat (http) sends them to /v1/chat/completions instead, the system
prompt as a system message and the documents and the question as text content parts of
one user message with "tokenmill": {"chunks": "parts"}, one word per token id; the
report's "chunks" are the servers' chunk cache counters during the run: tokens looked up,
reused, and of those recomputed, from the workers' status over rpc and from GET /metrics
over http, which counts that node's workers).
Sampling: --temperature T (default 0, greedy); --seed-base N gives request i the sampling
seed N + i (warm-up request k: N + requests + k), so a rerun of the same workload (same
--seed) with the same seeds must produce the same tokens, also when T > 0.
Output: a table, or with --json one JSON object on stdout (--output FILE writes it too).
Over rpc every token's index is checked: "duplicated" counts requests that received an
index twice, "missing" requests with an index that never arrived (below the completion's
length, or for a failed request below the highest index it received).
--record FILE (rpc only) writes one JSON line per measured request: i, prompt_len,
prompt_hash (FNV-1a 64 of the prompt ids or text, hex), max_tokens, seed, temperature,
sent_unix_us, first_token_unix_us (null: none), end_unix_us, outcome (length, stop, eos,
or the error code: worker_failed, timeout, ...), error, completion_tokens, prefill_worker,
decode_worker, migrations and migration_reasons (how often and why the router moved it to
another worker; 0 for a request that failed), duplicated, missing, and tokens: [[index, id, us after sent], ...] in
arrival order. Times are the client's clock mapped once onto the Unix epoch.
Exit status: 0 when at least one measured request completed (failed ones are counted in
"failed", with "first_error", and a warning goes to stderr); 1 when every measured request
failed, the server could not be reached, or the command line or dataset is wrong.)";

}  // namespace

command add_bench(CLI::App& app) {
  auto o = std::make_shared<bench_opts>();
  app.footer(bench_footer);
  app.add_option("--connect", o->connect,
                 "Server address HOST:PORT (RPC port, or HTTP port with --backend http)")
      ->capture_default_str();
  add_client_options(app, o->security);
  app.add_option("--client-loop", o->client_loop,
                 "thread: a thread and connection per stream (default); one: every stream on "
                 "one event-loop thread (rpc, --concurrency), each chunk stamped as the loop "
                 "reads it")
      ->check(CLI::IsMember({"thread", "one"}));
  app.add_option("--backend", o->backend,
                 "rpc (Cap'n Proto) or http (POST /v1/completions; /v1/chat/completions for "
                 "--rag-api chat)")
      ->check(CLI::IsMember({"rpc", "http"}))
      ->capture_default_str();
  auto* rate = app.add_option("--rate", o->rate, "Open loop: mean arrival rate in req/s, or inf");
  auto* conc = app.add_option("--concurrency", o->concurrency, "Closed loop: concurrent streams")
                   ->check(CLI::Range(1u, 4096u));
  app.add_option("--max-concurrency", o->max_concurrency,
                 "Rate mode: at most this many requests in flight (worker threads)")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--burstiness", o->burstiness,
                 "Rate mode: gamma shape of the arrival gaps (1 = Poisson, < 1 burstier)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  auto* requests = app.add_option("--requests", o->requests, "Measured requests")
                       ->check(CLI::Range(1u, 1u << 24))
                       ->capture_default_str();
  app.add_option("--warmup", o->warmup, "Requests run (and not measured) before measuring")
      ->capture_default_str();
  app.add_option("--input-len", o->input_len, "Prompt tokens (random, shared-prefix suffix)")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  auto* output_len = app.add_option("--output-len", o->output_len, "max_tokens")
                         ->check(CLI::Range(1u, 1u << 20))
                         ->capture_default_str();
  app.add_option("--range-ratio", o->range_ratio,
                 "Lengths uniform in [L(1-r), L(1+r)] instead of exactly L")
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str();
  app.add_option("--workload", o->workload, "random, shared-prefix, multi-turn, sharegpt or rag")
      ->check(CLI::IsMember({"random", "shared-prefix", "multi-turn", "sharegpt", "rag"}))
      ->capture_default_str();
  app.add_option("--pool", o->pool, "rag: documents in the pool")
      ->check(CLI::Range(1u, 1u << 16))
      ->capture_default_str();
  app.add_option("--docs", o->docs, "rag: documents per request (at most --pool)")
      ->check(CLI::Range(1u, 127u))
      ->capture_default_str();
  app.add_option("--doc-len", o->doc_len, "rag: tokens per document")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_flag("--rag-plain", o->rag_plain,
               "rag: send the same prompts unsegmented (the prefix cache alone: a baseline)");
  auto* rag_api = app.add_option("--rag-api", o->rag_api,
                                 "rag over http: completions (token-id segments) or chat "
                                 "(documents as content parts, tokenmill.chunks \"parts\")")
                      ->check(CLI::IsMember({"completions", "chat"}))
                      ->capture_default_str();
  app.add_option("--prefixes", o->prefixes, "shared-prefix: distinct system prompts")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--users", o->users, "shared-prefix: requests per system prompt")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--prefix-len", o->prefix_len, "shared-prefix, multi-turn: system prompt tokens")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--conversations", o->conversations, "multi-turn: chats")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--turns", o->turns, "multi-turn: turns per chat")
      ->check(CLI::Range(1u, 1u << 16))
      ->capture_default_str();
  app.add_option("--answer-len", o->answer_len,
                 "multi-turn: tokens of each earlier answer in a chat's history (default "
                 "--output-len)")
      ->check(CLI::Range(0u, 1u << 20));
  app.add_option("--dataset", o->dataset, "sharegpt: the ShareGPT JSON file");
  auto* slo_ttft = app.add_option("--slo-ttft-ms", o->slo_ttft_ms, "Goodput: TTFT objective (ms)")
                       ->check(CLI::PositiveNumber);
  auto* slo_tpot =
      app.add_option("--slo-tpot-ms", o->slo_tpot_ms, "Goodput: per-request TPOT objective (ms)")
          ->check(CLI::PositiveNumber);
  auto* slo_itl = app.add_option("--slo-itl-ms", o->slo_itl_ms,
                                 "Goodput: objective for the p99 of each request's ITLs (ms)")
                      ->check(CLI::PositiveNumber);
  app.add_flag("--ignore-eos,!--no-ignore-eos", o->ignore_eos,
               "Generate max_tokens tokens even past EOS (default on)");
  app.add_option("--vocab-size", o->vocab_size,
                 "Random token ids below this (default: the model's; 512 over HTTP when the "
                 "server does not say)");
  auto* seed = app.add_option(
      "--seed", o->seed,
      "Workload and arrival seed (default: a fresh one per run, reported as \"seed\", so that "
      "runs against one server do not hit each other's cached prefixes)");
  app.add_option("--temperature", o->temperature, "Sampling temperature of every request")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  auto* seed_base = app.add_option(
      "--seed-base", o->seed_base,
      "Request i samples with seed N + i (reproducible tokens with --temperature > 0)");
  app.add_option("--record", o->record,
                 "Write one JSON line per measured request to FILE (rpc backend)");
  app.add_option("--timeout", o->timeout_s, "Per-request timeout (s)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object instead of the table");
  app.add_option("--output", o->output, "Also write the JSON report to FILE");
  app.add_flag("--no-progress", o->no_progress, "No progress bar (it only shows on a terminal)");
  app.add_option("--step-ms", o->step_ms,
                 "Configured decode step (ms): report ITL divided by it (runtime overhead)");
  app.add_option("--prefill-us-per-token", o->prefill_us_per_token,
                 "Configured prefill cost (µs/token): report TTFT minus the modelled prefill");

  return [=]() -> int {
    // ---- the command line
    bool rate_mode = rate->count() > 0;
    if (rate_mode && conc->count() > 0)
      return fail("give either --rate R (open loop) or --concurrency C (closed loop), not both");
    if (!rate_mode && conc->count() == 0)
      return fail("give --rate R (open loop, req/s or inf) or --concurrency C (closed loop)");
    double rate_v = 0;
    if (rate_mode) {
      auto r = parse_rate(o->rate);
      if (!r) return fail(fmt::format("--rate '{}' is not a positive number or inf", o->rate));
      rate_v = *r;
    }
    if (o->workload == "sharegpt" && o->dataset.empty())
      return fail("--workload sharegpt needs --dataset FILE (a ShareGPT JSON file)");
    if (o->workload != "sharegpt" && !o->dataset.empty())
      return fail("--dataset is for --workload sharegpt");
    auto ep = parse_endpoint(o->connect);
    if (!ep) return fail(ep.error().message);
    // A dataset is read (and its errors reported) before anything connects.
    std::vector<wl::sharegpt_entry> dataset;
    if (o->workload == "sharegpt") {
      auto d = wl::read_sharegpt(o->dataset);
      if (!d) return fail(d.error().message);
      dataset = std::move(*d);
    }
    if (seed->count() == 0)
      o->seed = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
    const bool http = o->backend == "http";
    if (rag_api->count() > 0 && o->workload != "rag")
      return fail("--rag-api is for --workload rag");
    if (o->rag_api == "chat" && !http)
      return fail("--rag-api chat needs --backend http (the RPC API has no chat messages)");
    resolve_client_options(o->security);
    if (http && !o->security.tls_ca.empty())
      return fail("--tls-ca is for --backend rpc: the HTTP client speaks no TLS");
    if (http && !o->record.empty())
      return fail("--record needs --backend rpc: the HTTP stream carries text, not token ids");
    const bool one_loop = o->client_loop == "one";
    if (one_loop && (http || rate_mode))
      return fail(fmt::format("--client-loop one needs --backend rpc and --concurrency, got {}{}",
                              http ? "--backend http" : "",
                              rate_mode ? (http ? " and --rate" : "--rate") : ""));
    const bool seeded = seed_base->count() > 0;
    // Opened before anything runs, so that a bad path fails fast.
    std::ofstream record_file;
    if (!o->record.empty()) {
      record_file.open(o->record);
      if (!record_file) return fail(fmt::format("cannot write {}", o->record));
    }
    const std::string host = ep->first;
    const uint16_t port = ep->second;

    wl::connection_factory make = wl::connection_factory_for(
        http, ep->first, ep->second, o->ignore_eos, o->timeout_s, o->security);

    // ---- the model, and the workload (a probe connection, closed before measuring)
    served_model model;
    std::vector<wl::bench_request> measured, warm;
    {
      std::unique_ptr<client> rpc_probe;
      std::unique_ptr<http_client> http_probe;
      if (http) {
        auto c = http_client::connect(host, port, 10);
        if (!c) return fail(wl::describe(c.error()));
        http_probe = std::move(*c);
        http_probe->set_api_key(o->security.api_key);
        model = http_model_info(*http_probe);
      } else {
        auto c = client::connect(host, port, 10, o->security);
        if (!c) return fail(wl::describe(c.error()));
        rpc_probe = std::move(*c);
        const auto& m = rpc_probe->model();
        model = {m.name, m.vocab_size, m.max_context};
      }
      uint32_t vocab = o->vocab_size ? o->vocab_size : model.vocab_size ? model.vocab_size : 512;
      wl::vocab_range v;
      if (vocab <= static_cast<uint32_t>(v.lo)) v.lo = 0;
      v.hi = static_cast<token_id>(vocab);
      wl::length_range in{o->input_len, o->range_ratio}, out{o->output_len, o->range_ratio};
      const uint64_t warm_seed = o->seed ^ 0x9e3779b97f4a7c15ull;
      if (o->workload == "random") {
        measured = wl::random_workload({o->requests, in, out, v, o->seed});
        warm = wl::random_workload({o->warmup, in, out, v, warm_seed});
      } else if (o->workload == "multi-turn") {
        size_t n = requests->count() ? o->requests : size_t{o->conversations} * o->turns;
        wl::length_range ans{o->answer_len ? o->answer_len : o->output_len, o->range_ratio};
        measured = wl::multi_turn_workload(
            {n, o->conversations, o->turns, o->prefix_len, in, ans, out, v, o->seed});
        // requests 0 means "conversations x turns" to the workload: no warm-up is none.
        if (o->warmup > 0)
          warm = wl::multi_turn_workload(
              {o->warmup, o->conversations, o->turns, o->prefix_len, in, ans, out, v, warm_seed});
      } else if (o->workload == "rag") {
        wl::rag_spec r;
        r.pool = o->pool;
        r.docs = o->docs;
        r.doc_len = o->doc_len;
        r.system_len = o->prefix_len;
        r.question = in;
        r.output = out;
        r.vocab = v;
        // Warm-up requests draw from the same pool (another seed would make other documents):
        // they are the requests after the measured ones.
        r.requests = size_t{o->requests} + o->warmup;
        r.seed = o->seed;
        r.chat = o->rag_api == "chat";
        auto all = wl::rag_workload(r);
        if (o->rag_plain)
          for (auto& q : all)
            q.segment_ends.clear();
        measured.assign(all.begin(), all.begin() + o->requests);
        warm.assign(all.begin() + o->requests, all.end());
      } else if (o->workload == "shared-prefix") {
        size_t n = requests->count() ? o->requests : size_t{o->prefixes} * o->users;
        measured = wl::shared_prefix_workload(
            {n, o->prefixes, o->users, o->prefix_len, in, out, v, o->seed});
        // requests 0 means "prefixes x users" to the workload: --warmup 0 must send none.
        if (o->warmup > 0)
          warm = wl::shared_prefix_workload(
              {o->warmup, o->prefixes, o->users, o->prefix_len, in, out, v, warm_seed});
      } else {
        wl::tokenize_fn tok = [&](const std::string& text) -> result<std::vector<token_id>> {
          if (http_probe) return http_tokenize(*http_probe, text);
          return rpc_probe->tokenize(text);
        };
        wl::sharegpt_spec s;
        s.path = o->dataset;
        s.requests = size_t{o->requests} + o->warmup;
        s.max_len = model.max_context;
        s.fixed_output_len = output_len->count() ? o->output_len : 0;
        s.seed = o->seed;
        auto all = wl::select_sharegpt(dataset, s, tok);
        if (!all) return fail(wl::describe(all.error()));
        size_t n = std::min<size_t>(o->requests, all->size());
        measured.assign(all->begin(), all->begin() + static_cast<ptrdiff_t>(n));
        warm.assign(all->begin() + static_cast<ptrdiff_t>(n), all->end());
        for (size_t k = 0; warm.size() < o->warmup; ++k)  // too few entries: reuse
          warm.push_back(measured[k % measured.size()]);
      }
    }

    // rag: the servers' chunk cache counters, before and after the run (rpc: the workers'
    // status; http: GET /metrics, this node's workers).
    auto chunk_counters = [&]() -> std::optional<std::array<uint64_t, 3>> {
      if (o->workload != "rag") return std::nullopt;
      if (http) {
        auto c = http_client::connect(host, port, 10);
        if (!c) return std::nullopt;
        (*c)->set_api_key(o->security.api_key);
        auto r = (*c)->request("GET", "/metrics", {}, {}, {}, 10);
        if (!r || r->status != 200) return std::nullopt;
        std::array<uint64_t, 3> sum{};
        const char* names[] = {"tokenmill_chunk_lookup_tokens_total",
                               "tokenmill_chunk_hit_tokens_total",
                               "tokenmill_chunk_recomputed_tokens_total"};
        for (size_t k = 0; k < sum.size(); ++k) {
          auto v = wl::metric_sum(r->body, names[k]);
          if (!v) return std::nullopt;  // a server that does not export them
          sum[k] = static_cast<uint64_t>(std::llround(*v));
        }
        return sum;
      }
      auto c = client::connect(host, port, 10, o->security);
      if (!c) return std::nullopt;
      auto st = (*c)->status();
      if (!st) return std::nullopt;
      std::array<uint64_t, 3> sum{};
      for (const auto& w : st->workers) {
        sum[0] += w.chunk_lookup_tokens;
        sum[1] += w.chunk_hit_tokens;
        sum[2] += w.chunk_recomputed_tokens;
      }
      return sum;
    };
    const auto chunks_before = chunk_counters();

    // ---- run
    const size_t n = measured.size();
    const size_t cap = rate_mode ? o->max_concurrency : o->concurrency;
    const bool show = !o->no_progress && ::isatty(STDERR_FILENO);
    std::vector<wl::request_result> warm_results(warm.size()), results(n);
    // Over rpc every measured request keeps its tokens' indices (the delivery check).
    std::vector<wl::client_record> records(http ? 0 : n);
    auto sampling_of = [&](size_t k) {
      sampling_params sp;
      sp.temperature = o->temperature;
      if (seeded) sp.seed = o->seed_base + k;
      return sp;
    };
    wl::connection_pool pool(make, cap);
    size_t late = 0;
    int64_t t0 = 0;
    double secs = 0;
    size_t workers_used = 0;
    if (one_loop) {
      // Every stream on this thread's event loop: warm-up, then the measured requests, each
      // on connections of their own.
      wl::one_loop_spec spec{host,         port, o->security, o->ignore_eos,
                             o->timeout_s, cap,  nullptr,     nullptr};
      if (!warm.empty()) {
        spec.sampling_of = [&](size_t k) { return sampling_of(n + k); };
        if (auto r = wl::run_rpc_one_loop(spec, warm, warm_results, {}); !r)
          return fail(wl::describe(r.error()));
      }
      spec.sampling_of = sampling_of;
      t0 = now_ns();
      auto r = wl::run_rpc_one_loop(spec, measured, results, records);
      if (!r) return fail(wl::describe(r.error()));
      secs = static_cast<double>(now_ns() - t0) / 1e9;
      workers_used = *r;
    } else {
      size_t initial = cap;
      if (rate_mode && !std::isinf(rate_v))
        initial = std::clamp<size_t>(static_cast<size_t>(std::ceil(rate_v * 0.25)) + 1, 2, cap);
      initial = std::min({initial, std::max<size_t>(n, warm.size()), cap});
      pool.spawn_and_connect(initial);

      if (!warm.empty()) {
        progress bar(show, pool, 0, warm.size(), "warm-up");
        for (size_t i = 0; i < warm.size(); ++i)
          pool.submit({&warm[i], &warm_results[i], 0, sampling_of(n + i), nullptr}, false);
        pool.drain();
      }
      std::vector<double> schedule;
      if (rate_mode) schedule = wl::arrival_schedule(n, rate_v, o->burstiness, o->seed);
      t0 = now_ns();
      {
        progress bar(show, pool, warm.size(), n, "bench");
        for (size_t i = 0; i < n; ++i) {
          int64_t due = 0;
          if (rate_mode) {
            due = t0 + static_cast<int64_t>(schedule[i] * 1e9);
            int64_t wait = due - now_ns();
            if (wait > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(wait));
          }
          wl::client_record* rec = records.empty() ? nullptr : &records[i];
          if (pool.submit({&measured[i], &results[i], due, sampling_of(i), rec}, rate_mode) &&
              rate_mode)
            ++late;
        }
        pool.drain();
      }
      secs = static_cast<double>(now_ns() - t0) / 1e9;
      workers_used = pool.size();
      pool.stop();
    }

    // ---- report
    wl::slo_spec slo;
    if (slo_ttft->count()) slo.ttft_ms = o->slo_ttft_ms;
    if (slo_tpot->count()) slo.tpot_ms = o->slo_tpot_ms;
    if (slo_itl->count()) slo.itl_ms = o->slo_itl_ms;
    auto rep = wl::make_report(results, secs, slo);
    ojson j;
    j["backend"] = o->backend;
    j["workload"] = o->workload;
    j["mode"] = rate_mode ? "rate" : "concurrency";
    j["rate"] = !rate_mode ? ojson(nullptr) : std::isinf(rate_v) ? ojson("inf") : ojson(rate_v);
    j["burstiness"] = o->burstiness;
    j["concurrency"] = rate_mode ? ojson(nullptr) : ojson(o->concurrency);
    j["max_concurrency"] = cap;
    j["workers"] = workers_used;
    j["client_loop"] = o->client_loop;
    j["warmup"] = warm.size();
    j["input_len"] = o->input_len;
    j["output_len"] = o->output_len;
    j["range_ratio"] = o->range_ratio;
    j["seed"] = o->seed;
    j["temperature"] = as_decimal(o->temperature);
    j["seed_base"] = seeded ? ojson(o->seed_base) : ojson(nullptr);
    if (o->workload == "shared-prefix")
      j["shared_prefix"] = {
          {"prefixes", o->prefixes}, {"users", o->users}, {"prefix_len", o->prefix_len}};
    if (o->workload == "multi-turn")
      j["multi_turn"] = {{"conversations", o->conversations},
                         {"turns", o->turns},
                         {"system_len", o->prefix_len},
                         {"answer_len", o->answer_len ? o->answer_len : o->output_len}};
    if (o->workload == "sharegpt") j["dataset"] = o->dataset;
    if (o->workload == "rag") {
      j["rag"] = {{"pool", o->pool},
                  {"docs", std::min(o->docs, o->pool)},
                  {"doc_len", o->doc_len},
                  {"system_len", o->prefix_len},
                  {"segmented", !o->rag_plain},
                  {"api", http ? o->rag_api : std::string("rpc")}};
      const auto chunks_after = chunk_counters();
      if (chunks_before && chunks_after) {
        const uint64_t lookup = (*chunks_after)[0] - (*chunks_before)[0];
        const uint64_t hit = (*chunks_after)[1] - (*chunks_before)[1];
        j["chunks"] = {{"lookup_tokens", lookup},
                       {"hit_tokens", hit},
                       {"recomputed_tokens", (*chunks_after)[2] - (*chunks_before)[2]},
                       {"hit_fraction", lookup ? static_cast<double>(hit) / lookup : 0.0}};
      } else {
        j["chunks"] = nullptr;  // the status or the metrics could not be read
      }
    }
    j["model"] = {
        {"name", model.name}, {"vocab_size", model.vocab_size}, {"max_context", model.max_context}};
    for (auto& [k, v] : rep.items())
      j[k] = v;
    j["late_dispatches"] = late;
    std::vector<wl::delivery_check> checks(records.size());
    if (!records.empty()) {
      size_t dup = 0, miss = 0, conflict = 0;
      uint64_t dup_tokens = 0, miss_tokens = 0;
      std::map<std::string, size_t> outcomes;
      for (size_t i = 0; i < records.size(); ++i) {
        checks[i] = wl::check_delivery(records[i].tokens, records[i].completion_tokens);
        dup += checks[i].duplicated > 0;
        miss += checks[i].missing > 0;
        conflict += checks[i].conflicting > 0;
        dup_tokens += checks[i].duplicated;
        miss_tokens += checks[i].missing;
        ++outcomes[records[i].outcome.empty() ? "none" : records[i].outcome];
      }
      j["duplicated"] = dup;
      j["missing"] = miss;
      j["conflicting"] = conflict;
      j["duplicated_tokens"] = dup_tokens;
      j["missing_tokens"] = miss_tokens;
      j["outcomes"] = outcomes;
    } else {
      j["duplicated"] = nullptr;  // the HTTP stream carries no token indices
      j["missing"] = nullptr;
    }
    if (rate_mode) {
      std::vector<double> delays;
      for (const auto& r : results)
        delays.push_back(r.dispatch_delay_ms);
      auto d = summarize(delays);
      j["dispatch_delay_ms"] = {{"p50", d.p50}, {"p99", d.p99}, {"max", d.max}};
    }
    size_t completed = rep["completed"].get<size_t>();
    if (o->step_ms > 0) {
      const auto& itl = j["itl_ms"];
      j["itl_over_step"] = {{"p50", itl["p50"].get<double>() / o->step_ms},
                            {"p99", itl["p99"].get<double>() / o->step_ms}};
    }
    // Where the ITL tail goes (RPC: the server's step records beside the client's arrival
    // times): the mean of each part over the gaps above 1.1x the configured step (or the
    // p50 gap).
    {
      std::vector<wl::itl_part> parts;
      for (const auto& r : results)
        parts.insert(parts.end(), r.itl_parts.begin(), r.itl_parts.end());
      if (!parts.empty()) {
        std::vector<double> gaps;
        for (const auto& p : parts)
          gaps.push_back(p.gap_ms);
        const double base = o->step_ms > 0 ? o->step_ms : summarize(gaps).p50;
        const double threshold = 1.1 * base;
        wl::itl_part sum;
        size_t n = 0;
        for (const auto& p : parts)
          if (p.gap_ms > threshold) {
            ++n;
            sum.gap_ms += p.gap_ms;
            sum.step_ms += p.step_ms;
            sum.between_ms += p.between_ms;
            sum.held_ms += p.held_ms;
            sum.deliver_ms += p.deliver_ms;
          }
        auto mean = [n](double x) { return n ? x / static_cast<double>(n) : 0.0; };
        j["itl_tail"] = {{"threshold_ms", threshold},
                         {"gaps", parts.size()},
                         {"tail_gaps", n},
                         {"mean_ms",
                          {{"gap", mean(sum.gap_ms)},
                           {"step", mean(sum.step_ms)},
                           {"between_steps", mean(sum.between_ms)},
                           {"router_hold", mean(sum.held_ms)},
                           {"delivery", mean(sum.deliver_ms)}}}};
        // The same parts over the p99 tail alone (the gaps at or above the p99 gap).
        const double p99 = summarize(gaps).p99;
        wl::itl_part top;
        size_t m = 0;
        for (const auto& p : parts)
          if (p.gap_ms >= p99) {
            ++m;
            top.gap_ms += p.gap_ms;
            top.step_ms += p.step_ms;
            top.between_ms += p.between_ms;
            top.held_ms += p.held_ms;
            top.deliver_ms += p.deliver_ms;
          }
        auto avg = [m](double x) { return m ? x / static_cast<double>(m) : 0.0; };
        j["itl_p99_tail"] = {{"threshold_ms", p99},
                             {"tail_gaps", m},
                             {"mean_ms",
                              {{"gap", avg(top.gap_ms)},
                               {"step", avg(top.step_ms)},
                               {"between_steps", avg(top.between_ms)},
                               {"router_hold", avg(top.held_ms)},
                               {"delivery", avg(top.deliver_ms)}}}};
        // The same gaps as the router released them (gap minus delivery), and the steps
        // under them: a client-side p99 well above the router's is the frontend, the RPC or
        // the client itself (its threads share the machine with the server).
        std::vector<double> at_router, steps, delivery;
        for (const auto& p : parts) {
          at_router.push_back(p.gap_ms - p.deliver_ms);
          steps.push_back(p.step_ms);
          delivery.push_back(p.deliver_ms);
        }
        const auto r = summarize(std::move(at_router));
        const auto s = summarize(std::move(steps));
        j["itl_at_router_ms"] = {{"p50", r.p50}, {"p99", r.p99}};
        j["itl_step_ms"] = {{"p50", s.p50}, {"p99", s.p99}};
        // What the frontend, the RPC and the client add to each gap (the change in router ->
        // client time from one token to the next), apart from the step under it: its p99
        // is the delivery path's own tail, which a noisy step p99 does not hide.
        const auto d = summarize(std::move(delivery));
        j["itl_delivery_ms"] = {{"p50", d.p50}, {"p99", d.p99}};
      }
    }
    // The first gap (first token, from the prefill, to the first decode token: the KV's
    // move and the wait for a batch slot on the decode worker) apart from the later ones
    // (decode steps): split_itl leaves the first out, and under load it is a different
    // queue.
    {
      std::vector<double> first, later;
      for (const auto& r : results) {
        if (!r.ok || r.itl_ms.empty()) continue;
        first.push_back(r.itl_ms.front());
        later.insert(later.end(), r.itl_ms.begin() + 1, r.itl_ms.end());
      }
      if (!first.empty()) {
        auto f = summarize(first);
        j["itl_first_gap_ms"] = {{"p50", f.p50}, {"p99", f.p99}, {"max", f.max}};
      }
      if (!later.empty()) {
        auto l = summarize(later);
        j["itl_later_gaps_ms"] = {{"p50", l.p50}, {"p99", l.p99}, {"max", l.max}};
      }
    }
    // TTFT inside the server: each request's breakdown less the two client legs
    // (client_to_frontend, frontend_to_client), so that a starved client or a slow
    // network shows apart from the queue that admission bounds.
    {
      std::vector<double> server;
      for (const auto& r : results) {
        if (!r.ok || r.stages.empty()) continue;
        double ms = 0;
        for (const auto& st : r.stages)
          if (st.name != "client_to_frontend" && st.name != "frontend_to_client") ms += st.ms;
        server.push_back(ms);
      }
      if (!server.empty()) {
        auto x = summarize(server);
        j["ttft_server_ms"] = {{"p50", x.p50}, {"p99", x.p99}, {"max", x.max}};
      }
    }
    if (o->prefill_us_per_token > 0 && completed > 0) {
      double mean_prompt = static_cast<double>(rep["prompt_tokens"].get<uint64_t>()) /
                           static_cast<double>(completed);
      double modelled = mean_prompt * o->prefill_us_per_token / 1e3;
      j["prefill_modelled_ms"] = modelled;
      j["ttft_runtime_share_ms"] = {{"p50", j["ttft_ms"]["p50"].get<double>() - modelled},
                                    {"mean", j["ttft_ms"]["mean"].get<double>() - modelled}};
    }

    if (record_file.is_open()) {
      write_records(record_file, measured, results, records, checks, sampling_of);
      record_file.flush();
      if (!record_file) return fail(fmt::format("cannot write {}", o->record));
      record_file.close();
    }
    if (!o->output.empty()) {
      std::ofstream f(o->output);
      f << j.dump(2) << "\n";
      if (!f) return fail(fmt::format("cannot write {}", o->output));
    }
    if (o->json)
      std::printf("%s\n", j.dump().c_str());
    else
      print_table(j);
    std::fflush(stdout);
    size_t failed = rep["failed"].get<size_t>();
    if (completed == 0)
      return fail(fmt::format("every request failed ({}); the first error: {}", failed,
                              rep.value("first_error", std::string("?"))));
    if (failed > 0)
      std::fprintf(stderr, "tokenmill bench: warning: %zu of %zu requests failed; the first: %s\n",
                   failed, n, rep.value("first_error", std::string("?")).c_str());
    return 0;
  };
}

}  // namespace tokenmill::app
