#pragma once
/// What `tokenmill bench` sends and how it scores the answers, free of sockets, threads and
/// CAF (STYLE.md §2) so that every rule is unit-tested: arrival schedules, length
/// distributions, the synthetic and ShareGPT workloads, and the report (latency
/// percentiles, throughput, goodput under SLOs, the mean TTFT breakdown). Every random
/// choice comes from a seeded std::mt19937_64, so a seed reproduces a run's requests.
#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/api_types.hpp"
#include "common/ids.hpp"
#include "common/result.hpp"

namespace tokenmill::workload {

// ---- arrivals ------------------------------------------------------------------------

/// Send offsets (seconds from the start of the run, non-decreasing) of `n` requests that
/// arrive at `rate` requests/s on average. Gaps are gamma-distributed with shape
/// `burstiness` and mean 1/rate, as vLLM's benchmark does: burstiness 1 is a Poisson
/// process (exponential gaps), below 1 is burstier, above 1 steadier. A rate of +infinity
/// sends everything at t = 0. Preconditions: rate > 0, burstiness > 0.
std::vector<double> arrival_schedule(size_t n, double rate, double burstiness, uint64_t seed);

// ---- lengths -------------------------------------------------------------------------

/// A token count: `len` exactly (range_ratio 0), or uniform over the integers in
/// [floor(len * (1 - r)), floor(len * (1 + r))], never below 1. r in [0, 1).
struct length_range {
  uint32_t len = 128;
  double range_ratio = 0;
  uint32_t lo() const;
  uint32_t hi() const;
};

/// One draw from `r`.
uint32_t sample_length(const length_range& r, std::mt19937_64& rng);

// ---- requests ------------------------------------------------------------------------

/// One request of a workload: a prompt as token ids or as text.
struct bench_request {
  bool has_text = false;
  std::vector<token_id> prompt_ids;  ///< when !has_text
  std::string prompt_text;           ///< when has_text
  uint32_t prompt_len = 0;           ///< tokens (counted by the tokenizer for text)
  uint32_t max_tokens = 0;           ///< sent as max_tokens
  uint32_t expected_output_len = 0;  ///< tokens the workload expects back (ShareGPT: the answer's)
  uint32_t group = 0;                ///< shared-prefix: which prefix (0 otherwise)
  /// rag: the prompt given as segments (chunk reuse): where each segment of prompt_ids
  /// ends. Empty: an ordinary prompt.
  std::vector<uint32_t> segment_ends;
  /// rag as chat (rag_spec::chat): the same segments as text, one word per token id: the
  /// system message, then the user message's content parts (the documents, then the
  /// question). Sent to /v1/chat/completions, with `"tokenmill": {"chunks": "parts"}` when
  /// segment_ends is set. Empty: not a chat request.
  std::vector<std::string> chat_parts;
};

/// Random token ids are drawn uniformly from [vocab_lo, vocab_hi).
struct vocab_range {
  token_id lo = 259;  ///< the first id past the byte and special tokens of tokenmill's vocabularies
  token_id hi = 512;  ///< one past the last id (the model's vocabulary size)
};

/// `random`: prompts of synthetic token ids. Request i depends only on (seed, i).
struct random_spec {
  size_t requests = 0;
  length_range input{128, 0};
  length_range output{64, 0};
  vocab_range vocab;
  uint64_t seed = 1;
};
std::vector<bench_request> random_workload(const random_spec& s);

/// `shared-prefix`: `prefixes` system prompts of `prefix_len` random tokens; request i uses
/// prefix i % prefixes (groups interleaved, so each prefix comes back while the others
/// are in flight and the prefix cache decides the TTFT) followed by a fresh random user
/// suffix of `input` tokens. `users` is the number of requests per prefix when `requests`
/// is 0 (then requests = prefixes x users).
struct shared_prefix_spec {
  size_t requests = 0;
  uint32_t prefixes = 4;
  uint32_t users = 8;
  uint32_t prefix_len = 512;
  length_range input{128, 0};
  length_range output{64, 0};
  vocab_range vocab;
  uint64_t seed = 1;
};
std::vector<bench_request> shared_prefix_workload(const shared_prefix_spec& s);

/// `multi-turn`: `conversations` chats of `turns` turns each. Turn t of a chat sends its
/// system prompt (`system_len` random tokens, one per chat), then every earlier turn's user
/// message (`input` tokens) and answer (`answer` tokens, synthetic: the workload is built
/// before any reply, so a chat's history is fixed by the seed, not by what the model said),
/// then turn t's user message: each turn's prompt extends the previous one, as a chat
/// client's does. Request i is turn i / conversations of chat i % conversations (chats
/// interleaved, so a chat's next turn comes back after the others' turns, when its
/// history may have been evicted). `requests` 0: conversations x turns. group = the chat.
struct multi_turn_spec {
  size_t requests = 0;
  uint32_t conversations = 8;
  uint32_t turns = 4;
  uint32_t system_len = 256;
  length_range input{64, 0};   ///< each user message
  length_range answer{64, 0};  ///< each earlier answer in the history
  length_range output{64, 0};  ///< max_tokens of each turn
  vocab_range vocab;
  uint64_t seed = 1;
};
std::vector<bench_request> multi_turn_workload(const multi_turn_spec& s);

/// `rag`: retrieval-augmented prompts for chunk reuse (issue 17). A pool of `pool` documents
/// of `doc_len` random tokens; request i sends a system prompt (`system_len` tokens, the
/// same for all), `docs` distinct documents drawn from the pool and shuffled, and a fresh
/// question (`question` tokens), each a segment (bench_request::segment_ends), so the
/// server can reuse a document's KV wherever it sat before. Request i depends only on
/// (seed, i). `docs` is clamped to the pool. group = the first document's index. With
/// `chat`, each request also carries its segments as text (bench_request::chat_parts), for
/// the chat API: the same document is the same text wherever it sits.
struct rag_spec {
  size_t requests = 0;
  uint32_t pool = 16;
  uint32_t docs = 4;
  uint32_t doc_len = 256;
  uint32_t system_len = 64;
  length_range question{32, 0};
  length_range output{64, 0};
  vocab_range vocab;
  uint64_t seed = 1;
  bool chat = false;
};
std::vector<bench_request> rag_workload(const rag_spec& s);

/// Token ids as text for the chat API: one word per id (a fixed list of English words,
/// indexed by id modulo its size), separated by spaces. The same ids give the same text.
std::string ids_as_words(std::span<const token_id> ids);

/// The sum of every sample of metric `name` in a Prometheus text exposition (`GET
/// /metrics`): a per-worker counter summed over the workers. nullopt when no sample has
/// that name (an older server, or a metric it does not export).
std::optional<double> metric_sum(std::string_view exposition, std::string_view name);

/// Counts a text's tokens (the server's tokenizer: RPC tokenize or HTTP POST /tokenize).
using tokenize_fn = std::function<result<std::vector<token_id>>(const std::string&)>;

/// `sharegpt`: a ShareGPT-format JSON file, an array of
/// `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}`.
/// The prompt is the first human turn ("human" or "user"), the expected output is the
/// token count of the turn after it when that one is the model's ("gpt", "chatgpt",
/// "assistant" or "bard"). Entries are shuffled with `seed` and taken in that order until
/// `requests` are found; like vLLM, an entry is skipped when it has fewer than 2 turns,
/// no human turn followed by a model turn, a prompt or answer under 4 tokens, or prompt +
/// output above `max_len` tokens (0 = no limit). With `fixed_output_len` > 0 every
/// request asks for that many tokens instead of the answer's length. Fewer valid entries
/// than `requests` give a shorter list; none at all is an error.
struct sharegpt_spec {
  std::string path;
  size_t requests = 0;
  uint32_t max_len = 0;
  uint32_t fixed_output_len = 0;
  uint64_t seed = 1;
};

/// Entries of a parsed ShareGPT file that have the right shape (first human turn, answer).
struct sharegpt_entry {
  size_t index = 0;  ///< position in the file's array
  std::string prompt;
  std::string answer;
};

/// Parses ShareGPT JSON `text` (`what` names it in errors, usually the file path). A JSON
/// syntax error, a top level that is not an array, an entry that is not an object with a
/// "conversations" array, or a turn without string "from" and "value" is an
/// invalid_request error naming `what` and the entry index. Entries with fewer than 2
/// turns or no human -> model pair are left out.
result<std::vector<sharegpt_entry>> parse_sharegpt(const std::string& text,
                                                   const std::string& what);

/// Reads and parses the ShareGPT file at `path` (errors name it).
result<std::vector<sharegpt_entry>> read_sharegpt(const std::string& path);

/// Shuffles `entries` with `s.seed`, tokenizes and filters them as described above (errors
/// name `s.path` and the entry).
result<std::vector<bench_request>> select_sharegpt(const std::vector<sharegpt_entry>& entries,
                                                   const sharegpt_spec& s,
                                                   const tokenize_fn& tokenize);

/// read_sharegpt(s.path), then select_sharegpt.
result<std::vector<bench_request>> sharegpt_workload(const sharegpt_spec& s,
                                                     const tokenize_fn& tokenize);

// ---- results and the report ----------------------------------------------------------

/// One measured request as the client saw it.
/// One client-side token gap between two decode steps, split on one host's steady clock:
/// gap = step + between + held + deliver.
struct itl_part {
  double gap_ms = 0;      ///< the client saw the token this long after the previous one
  double step_ms = 0;     ///< the decode step that produced it (engine time)
  double between_ms = 0;  ///< the decode worker between the previous step's end and its start
  double held_ms = 0;     ///< change in how long the router held the token after its step
  double deliver_ms = 0;  ///< change in router -> client time (frontend, RPC, client)
};

/// Splits `r`'s token gaps (see itl_part) from the server's step records and the client's
/// arrival times; tokens inside a chunk (no gap of their own) and the first decode token
/// (its predecessor came from a prefill) are skipped.
std::vector<itl_part> split_itl(std::span<const step_record> steps, std::span<const double> itl_ms);

struct request_result {
  bool ok = false;
  std::string error;  ///< when !ok
  /// When !ok: the errc name (overloaded, timeout, …; over HTTP the error body's code, else
  /// "http_STATUS"), or "client" for a failure on the client's side of the connection.
  std::string error_code;
  double ttft_ms = 0;            ///< sent -> first token received
  std::vector<double> itl_ms;    ///< gap before each later token (or content event)
  double e2e_ms = 0;             ///< sent -> last byte received
  uint32_t output_tokens = 0;    ///< completion tokens
  uint32_t prompt_tokens = 0;    ///< as the server counted them (or the workload's)
  std::vector<stage_ms> stages;  ///< TTFT breakdown, in causal order (may be empty)
  double dispatch_delay_ms = 0;  ///< rate mode: actual send - scheduled send
  /// RPC only (the server's per-token step records): where each client-side token gap
  /// between two decode steps went. Empty over HTTP.
  std::vector<itl_part> itl_parts;
};

/// Per-request service level objectives, in ms; unset ones are not checked. A request is
/// good when it succeeded, ttft <= ttft_ms, its own TPOT (e2e - ttft) / (tokens - 1)
/// <= tpot_ms (a single-token answer has no TPOT and passes), and the p99 of its own
/// ITLs <= itl_ms (p99 rather than max, so that one scheduling hiccup in a long answer
/// does not condemn it; for answers under 100 tokens it is close to the max).
struct slo_spec {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;
  std::optional<double> itl_ms;
  bool any() const { return ttft_ms || tpot_ms || itl_ms; }
};

/// The request's TPOT in ms; nullopt for fewer than 2 tokens.
std::optional<double> request_tpot_ms(const request_result& r);
/// True when `r` succeeded and meets every set objective of `slo`.
bool meets_slo(const request_result& r, const slo_spec& slo);

/// The report over `results` measured during `duration_s` seconds:
/// - requests (all), completed, failed, first_error (when any failed); rejected (failed as
///   overloaded: shed by admission control), rejected_fraction (of all), errors: {code: n}
///   over the failed ones;
/// - prompt_tokens, output_tokens (totals over completed requests);
/// - ttft_ms, itl_ms, tpot_ms, e2e_ms: {p50, p90, p99, mean} over completed requests (ITL
///   over every gap of every request; TPOT over requests with 2+ tokens);
/// - requests_per_s, output_tokens_per_s, total_tokens_per_s (prompt + output) over
///   duration_s, counting completed requests;
/// - goodput: {requests_per_s, fraction (of all requests), slo: {ttft_ms, tpot_ms,
///   itl_ms} (null when unset)}; with no SLO set every completed request is good;
/// - ttft_stages_mean_ms: {stage: mean ms over completed requests}, stages in the order
///   they first appeared (a stage a request lacks counts 0 for it, so the means add up to
///   the mean TTFT when each request's stages add up to its TTFT).
nlohmann::ordered_json make_report(const std::vector<request_result>& results, double duration_s,
                                   const slo_spec& slo);

/// One streamed token as the client received it: its index in the completion and its id.
struct delivered_token {
  uint32_t index = 0;
  token_id id = 0;
};

/// What a request's stream did with token indices. Every index must arrive exactly once,
/// in particular across a migration (the stream resumes at the next index) or a retry.
struct delivery_check {
  uint32_t duplicated = 0;   ///< deliveries of an index that had already arrived
  uint32_t conflicting = 0;  ///< of those, deliveries whose token id differs from the first
  uint32_t missing = 0;      ///< indices in [0, end) that never arrived
};

/// Checks `delivered` (in arrival order). `end` is one past the last index the request
/// should have delivered: its completion_tokens when it completed; for a failed request
/// pass 0, and only gaps below the highest index that did arrive count as missing.
delivery_check check_delivery(const std::vector<delivered_token>& delivered, uint32_t end);

/// {p50, p90, p99, mean} of `samples` (all 0 when empty).
nlohmann::ordered_json percentiles_json(const std::vector<double>& samples);

}  // namespace tokenmill::workload
