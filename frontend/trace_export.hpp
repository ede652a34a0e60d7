#pragma once
/// Per-request timelines as Chrome/Perfetto trace JSON (DESIGN.md §7), for
/// `tokenmill trace`. Open the file in https://ui.perfetto.dev or chrome://tracing. No CAF.
///
/// One process per node ("node N"), one thread per track: "frontend", "router", each
/// prefill and decode worker by name, and "requests". Every TTFT stage of a request is a
/// complete event ("X") on the track of the node and worker its interval ends on; each
/// request is a span "request <id>" from arrival to finish; each distinct decode step is
/// one "decode step" event on its decode worker (args: batch, prefill tokens, and the
/// token index of every logged request it produced a token for); ITL spikes are instant
/// events ("i") named by their cause; the planner's role changes go on a "planner" track.
/// Events that overlap on one track (concurrent requests) go to extra lanes of it
/// ("NAME #2", ...), so that every lane nests properly.
/// Times are microseconds from the earliest stamp.
#include <cstddef>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/api_types.hpp"
#include "frontend/request_log.hpp"

namespace tokenmill {

struct trace_export_stats {
  size_t requests = 0;
  size_t events = 0;  ///< excluding metadata
};

/// {"traceEvents": [...], "displayTimeUnit": "ms"}.
nlohmann::ordered_json chrome_trace(const std::vector<request_record>& requests,
                                    trace_export_stats* stats = nullptr);
/// The same with the planner's decisions and role changes on a "planner" track of node 0
/// (their t_ns on the requests' clock): a decided flip or drain is an instant event, a
/// finished or failed role change a span from change_role to its end.
nlohmann::ordered_json chrome_trace(const std::vector<request_record>& requests,
                                    const std::vector<planner_event>& planner,
                                    trace_export_stats* stats = nullptr);
nlohmann::ordered_json chrome_trace(const std::vector<generation_summary>& requests,
                                    trace_export_stats* stats = nullptr);

}  // namespace tokenmill
