#pragma once
/// The ucx_perftest baseline of `tokenmill bench-transfer` (cmd_bench_transfer_perftest.cpp).
#include <cstdint>
#include <optional>
#include <string>

namespace tokenmill::app {

/// ucx_perftest put bandwidth over loopback tcp (UCX_TLS=tcp) for `size`-byte messages,
/// `iters` of them with `window` outstanding: GB/s (10^9 B/s), or nullopt with `err` set
/// (ucx_perftest missing, no free port, no "Final:" line after 3 tries).
std::optional<double> perftest_gbps(uint64_t size, uint64_t iters, uint32_t window,
                                    std::string& err);

}  // namespace tokenmill::app
