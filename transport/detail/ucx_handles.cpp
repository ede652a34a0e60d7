#include "transport/detail/ucx_handles.hpp"

#include <cstring>

#include <fmt/format.h>

namespace tokenmill::ucx {

error_info ucs_error(ucs_status_t st, std::string_view what, std::source_location loc) {
  errc code = errc::unavailable;
  switch (st) {
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT:
      code = errc::timeout;
      break;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_INVALID_ADDR:
      code = errc::internal;
      break;
    default:
      break;
  }
  const char* file = loc.file_name();
  if (const char* slash = std::strrchr(file, '/')) file = slash + 1;
  return {code, fmt::format("ucx: {}: {} ({}:{})", what, ucs_status_string(st), file, loc.line())};
}

}  // namespace tokenmill::ucx
