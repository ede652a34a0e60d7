#pragma once
/// `tokenmill bench`'s output besides the JSON report (cmd_bench_report.cpp).
#include <cstddef>
#include <functional>
#include <ostream>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/api_types.hpp"
#include "frontend/bench_connection.hpp"
#include "frontend/workload.hpp"

namespace tokenmill::app {

/// `v` as the decimal it was typed as (0.8, not the float's 0.800000011920929).
double as_decimal(float v);

/// The --record lines: one JSON object per measured request (see `tokenmill bench
/// --help`), with `sampling_of(i)` the sampling request i was sent with.
void write_records(std::ostream& out, const std::vector<workload::bench_request>& measured,
                   const std::vector<workload::request_result>& results,
                   const std::vector<workload::client_record>& records,
                   const std::vector<workload::delivery_check>& checks,
                   const std::function<sampling_params(size_t)>& sampling_of);

/// The report `j` (workload::make_report plus the bench's fields) as a table on stdout.
void print_table(const nlohmann::ordered_json& j);

}  // namespace tokenmill::app
