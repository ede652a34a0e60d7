#pragma once
/// Every UCX handle the transport touches, as RAII (STYLE.md §5), and the one place a
/// ucs_status_t becomes an error_info (STYLE.md §7). Internal to transport/: no UCX
/// handle leaves it.
#include <unistd.h>

#include <memory>
#include <source_location>
#include <string_view>

#include <ucp/api/ucp.h>

#include "common/errors.hpp"

namespace tokenmill::ucx {

/// `st` as an error_info: "ucx: <what>: <UCX's words> (file:line)" with errc::timeout for
/// UCX's timeouts, errc::internal for invalid arguments and errc::unavailable otherwise.
error_info ucs_error(ucs_status_t st, std::string_view what,
                     std::source_location loc = std::source_location::current());

/// RAII deleters for every UCX handle.
struct context_deleter {
  void operator()(ucp_context_h c) const { ucp_cleanup(c); }
};
struct worker_deleter {
  void operator()(ucp_worker_h w) const { ucp_worker_destroy(w); }
};
struct config_deleter {
  void operator()(ucp_config_t* c) const { ucp_config_release(c); }
};
struct mem_deleter {
  ucp_context_h context = nullptr;
  void operator()(ucp_mem_h m) const { ucp_mem_unmap(context, m); }
};
struct rkey_deleter {
  void operator()(ucp_rkey_h k) const { ucp_rkey_destroy(k); }
};
struct rkey_buffer_deleter {
  void operator()(void* b) const { ucp_rkey_buffer_release(b); }
};
struct address_deleter {
  ucp_worker_h worker = nullptr;
  void operator()(ucp_address_t* a) const { ucp_worker_release_address(worker, a); }
};

using context_ptr = std::unique_ptr<ucp_context, context_deleter>;
using worker_ptr = std::unique_ptr<ucp_worker, worker_deleter>;
using config_ptr = std::unique_ptr<ucp_config_t, config_deleter>;
using mem_ptr = std::unique_ptr<ucp_mem, mem_deleter>;
using rkey_ptr = std::unique_ptr<ucp_rkey, rkey_deleter>;
using rkey_buffer_ptr = std::unique_ptr<void, rkey_buffer_deleter>;
using address_ptr = std::unique_ptr<ucp_address_t, address_deleter>;

/// Closes a file descriptor on destruction.
struct fd_guard {
  int fd = -1;
  fd_guard() = default;
  explicit fd_guard(int f) : fd(f) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace tokenmill::ucx
