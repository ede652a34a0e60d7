#include "common/errors.hpp"

namespace tokenmill {

std::string_view to_string(errc e) {
  switch (e) {
    case errc::ok:
      return "ok";
    case errc::invalid_request:
      return "invalid_request";
    case errc::overloaded:
      return "overloaded";
    case errc::no_workers:
      return "no_workers";
    case errc::worker_failed:
      return "worker_failed";
    case errc::cancelled:
      return "cancelled";
    case errc::kv_corrupt:
      return "kv_corrupt";
    case errc::out_of_blocks:
      return "out_of_blocks";
    case errc::timeout:
      return "timeout";
    case errc::unavailable:
      return "unavailable";
    case errc::invalid_model:
      return "invalid_model";
    case errc::unauthenticated:
      return "unauthenticated";
    case errc::internal:
      return "internal";
  }
  return "unknown";
}

errc errc_from_string(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(errc::internal); ++i)
    if (to_string(static_cast<errc>(i)) == name) return static_cast<errc>(i);
  return errc::internal;
}

}  // namespace tokenmill
