#pragma once
/// A small synchronous HTTP/1.1 client (Boost.Beast underneath, not in this header), for
/// `tokenmill bench --backend http` and the tests: one keep-alive connection with
/// TCP_NODELAY, every call bounded by a timeout, and Server-Sent Events streaming. Not
/// thread-safe; use one client per thread, like frontend/client.hpp.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.hpp"

namespace tokenmill {

/// A response as received. For an event stream `body` is empty (the events went to the
/// caller's callback).
struct http_response {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  ///< in received order
  std::string body;
  /// The first header named `name` (case-insensitive); empty when absent.
  std::string_view header(std::string_view name) const;
};

/// Extra request headers, name -> value.
using http_headers = std::vector<std::pair<std::string, std::string>>;

/// Incremental parser of a `text/event-stream` body (WHATWG HTML "server-sent events"):
/// lines end with \r\n, \n or \r; `data:` fields (one optional space after the colon
/// dropped) accumulate, joined with \n; a blank line dispatches the event when it had a
/// data field; comments (lines starting with ':') and other fields (event, id, retry) are
/// ignored. Bytes may be split anywhere across feed() calls.
class sse_parser {
 public:
  /// Consumes `bytes`; returns the data of every event completed by them, in order.
  std::vector<std::string> feed(std::string_view bytes);

 private:
  void line_done(std::vector<std::string>& out);
  std::string line_;  ///< the current, unfinished line
  std::string data_;  ///< data fields of the current event, each followed by \n
  bool has_data_ = false;
  bool after_cr_ = false;  ///< the last byte was \r (a following \n belongs to it)
};

class http_client {
 public:
  /// Opens a TCP connection to host:port within `timeout_s`; errc::unavailable when it
  /// cannot, errc::timeout when it took too long.
  static result<std::unique_ptr<http_client>> connect(const std::string& host, uint16_t port,
                                                      double timeout_s = 10);
  ~http_client();
  /// Sends "Authorization: Bearer KEY" with every request from now on (none when empty);
  /// headers given to a call replace it.
  void set_api_key(const std::string& key);
  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  /// Sends one request and reads the whole response within `timeout_s`. A body is sent
  /// with `content_type` when non-empty. The connection is kept alive when the server
  /// allows; one that the server closed is reopened once before the request fails.
  /// Errors: errc::unavailable (connection refused, reset or closed), errc::timeout.
  result<http_response> request(std::string_view method, std::string_view target,
                                std::string_view body = {},
                                std::string_view content_type = "application/json",
                                const http_headers& headers = {}, double timeout_s = 60);

  /// POSTs `json_body` to `target` asking for an event stream, and calls `on_event` with
  /// each event's data and the client steady clock (ns) at which its last bytes arrived.
  /// Returns when the body ends (chunked end, length reached, or the server closed the
  /// connection), with the status and headers; the body is kept only when the response is
  /// not `text/event-stream` (an error JSON, for instance). `timeout_s` bounds the whole
  /// exchange.
  result<http_response> post_sse(
      std::string_view target, std::string_view json_body,
      const std::function<void(std::string_view data, int64_t recv_ns)>& on_event,
      double timeout_s = 600);

 private:
  struct impl;
  explicit http_client(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

}  // namespace tokenmill
