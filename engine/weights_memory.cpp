#include "engine/weights_memory.hpp"

#include <fstream>
#include <sstream>

namespace tokenmill {

result<weights_hugepages> parse_weights_hugepages(std::string_view text, std::string_view what) {
  if (text == "on") return weights_hugepages::on;
  if (text == "off") return weights_hugepages::off;
  if (text == "auto") return weights_hugepages::auto_;
  return error_info{errc::invalid_request, std::string(what) + ": '" + std::string(text) +
                                               "' is not one of on, off, auto"};
}

std::string_view to_string(weights_hugepages mode) {
  switch (mode) {
    case weights_hugepages::on:
      return "on";
    case weights_hugepages::off:
      return "off";
    case weights_hugepages::auto_:
      return "auto";
  }
  return "auto";
}

bool use_weights_hugepages(weights_hugepages mode, std::string_view thp_enabled) {
  if (mode != weights_hugepages::auto_) return mode == weights_hugepages::on;
  auto open = thp_enabled.find('[');
  auto close = thp_enabled.find(']', open == std::string_view::npos ? 0 : open);
  if (open == std::string_view::npos || close == std::string_view::npos) return false;
  auto active = thp_enabled.substr(open + 1, close - open - 1);
  return active == "always" || active == "madvise";
}

std::string read_thp_enabled() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

uint64_t anon_huge_bytes() {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("AnonHugePages:", 0) != 0) continue;
    std::istringstream s(line.substr(14));
    uint64_t kib = 0;
    s >> kib;
    return kib * 1024;
  }
  return 0;
}

}  // namespace tokenmill
