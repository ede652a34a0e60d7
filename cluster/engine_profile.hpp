#pragma once
/// An engine's measured costs as a planner needs them (`tokenmill profile` writes them,
/// `tokenmill plan` reads them): prefill time per chunk size and prompt length, decode step
/// time per batch size and context length, the prefill saturation point, and the KV layout
/// with the blocks the profiled machine's memory would hold. CAF-free; the JSON form is
/// versioned (`version`), and reading it checks every field it uses, naming the field.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "actors/router/routing_policy.hpp"
#include "common/result.hpp"
#include "engine/kv_layout.hpp"
#include "engine/sim_engine.hpp"

namespace tokenmill {

/// The profile format this build writes and reads.
inline constexpr uint32_t engine_profile_version = 1;

/// One prompt of `prompt_tokens` prefilled from position 0 in chunks of `chunk_tokens`
/// (one engine call per chunk): `calls` calls, `seconds` in all (median of the runs).
struct profile_prefill_point {
  uint32_t chunk_tokens = 0;
  uint32_t prompt_tokens = 0;
  uint32_t calls = 0;
  double seconds = 0;
};

/// One decode step over `batch` sequences of `context_tokens` context each (median, s).
struct profile_decode_point {
  uint32_t batch = 0;
  uint32_t context_tokens = 0;
  double step_seconds = 0;
};

struct engine_profile {
  uint32_t version = engine_profile_version;
  std::string engine;  ///< "sim", "cpu" or "cuda"
  /// The model file as given (absolute when profile wrote it); empty for the sim engine.
  std::string model_path;
  std::string model_name;  ///< the model's name ("sim" for the sim engine)
  uint32_t threads = 1;    ///< compute threads of the profiled engine
  uint32_t device = 0;     ///< cuda device ordinal
  uint32_t max_context = 0;
  bool has_sim = false;  ///< engine == "sim": `sim` holds its timing model
  sim_config sim;        ///< the sim engine's timing model (layout in `layout`)
  kv_layout layout;
  uint64_t kv_bytes_per_token = 0;
  /// Memory the KV pools of the profiled machine could use (bytes) and the blocks that is.
  uint64_t kv_memory_bytes = 0;
  uint64_t kv_max_blocks = 0;
  std::string kv_memory_source;   ///< where kv_memory_bytes came from ("MemAvailable", ...)
  std::string cpu;                ///< the profiled machine's CPU model name
  uint32_t hardware_threads = 0;  ///< of the profiled machine
  double loadavg_before = -1;     ///< 1-minute load average before and after the sweep
  double loadavg_after = -1;      ///< (-1: unknown); high values mean a disturbed profile
  std::string device_name;        ///< cuda: the device's name
  /// Prefill saturation: the smallest chunk whose throughput reaches `saturation_fraction`
  /// of the best measured (find_prefill_saturation).
  double saturation_fraction = 0.9;
  uint32_t saturation_chunk = 0;
  double peak_prefill_tokens_per_s = 0;
  std::vector<profile_prefill_point> prefill;
  std::vector<profile_decode_point> decode;
};

/// Saturation point of the prefill measurements: per chunk size, the tokens per second
/// over all of its points (a single call and the chunked prompts, whose many calls average
/// out noise); the smallest chunk reaching `fraction` of the best. errc::invalid_request
/// when there is no point or `fraction` is outside (0, 1].
struct prefill_saturation {
  uint32_t chunk_tokens = 0;
  double tokens_per_s = 0;
  double peak_tokens_per_s = 0;
};
result<prefill_saturation> find_prefill_saturation(std::span<const profile_prefill_point> points,
                                                   double fraction);

/// The profile as JSON (pretty, fields in a fixed order).
std::string profile_to_json(const engine_profile& p);

/// Reads a profile; every problem is errc::invalid_request naming `source` and the field
/// ("profile.json: decode[2].step_seconds: expected a positive number"). Checks the
/// version, the engine kind, the layout, and that there are prefill and decode points.
result<engine_profile> parse_profile(std::string_view json_text, std::string_view source);

/// Seconds to prefill a prompt of `prompt_tokens` from position 0 in chunks of `chunk`,
/// from the profile's points: linear in the prompt length between the measured lengths of
/// the nearest measured chunk size (linear extrapolation past the last two, proportional
/// past a single one); a prompt no longer than the chunk is one call of that many tokens,
/// from the single-call points.
double profile_prefill_seconds(const engine_profile& p, uint32_t chunk, uint32_t prompt_tokens);

/// Seconds of one decode step over `batch` sequences of `context` tokens each: linear in the
/// batch within each measured context, then linear in the context (extrapolated linearly
/// past the measured range; the cheapest measured step where that falls to 0 or below).
double profile_decode_seconds(const engine_profile& p, double batch, double context);

/// The profile as the router's cost model reads it (routing_policy.hpp, prefill_speed): the
/// seconds to prefill prompts of 16, 32, ... tokens up to the model's context (or the
/// longest measured prompt) in chunks of `chunk`, made non-decreasing, and the peak prefill
/// throughput for queued work. `source` names the profile in traces.
prefill_speed profile_speed(const engine_profile& p, uint32_t chunk, const std::string& source);

/// The chunk sizes the profile measured, ascending.
std::vector<uint32_t> profile_chunks(const engine_profile& p);
/// The largest decode batch the profile measured.
uint32_t profile_max_batch(const engine_profile& p);

}  // namespace tokenmill
