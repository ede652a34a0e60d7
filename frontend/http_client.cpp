#include "frontend/http_client.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <optional>

#include <fmt/format.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "common/clock.hpp"

namespace tokenmill {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using steady = std::chrono::steady_clock;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

steady::time_point deadline_after(double timeout_s) {
  return steady::now() + std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6));
}

/// Errors the server causes by closing a kept-alive connection we then reuse: worth one
/// retry on a fresh connection when nothing of the response was received yet.
bool closed_by_peer(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::connection_reset ||
         ec == net::error::broken_pipe || ec == net::error::eof;
}

template <class Fields>
void copy_headers(const Fields& f, http_response& out) {
  for (const auto& h : f)
    out.headers.emplace_back(std::string(h.name_string()), std::string(h.value()));
}

}  // namespace

std::string_view http_response::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) return v;
  return {};
}

// ---- sse_parser ----------------------------------------------------------------------

std::vector<std::string> sse_parser::feed(std::string_view bytes) {
  std::vector<std::string> out;
  for (char ch : bytes) {
    if (after_cr_) {
      after_cr_ = false;
      if (ch == '\n') continue;  // the \n of a \r\n
    }
    if (ch == '\r') {
      after_cr_ = true;
      line_done(out);
    } else if (ch == '\n') {
      line_done(out);
    } else {
      line_ += ch;
    }
  }
  return out;
}

void sse_parser::line_done(std::vector<std::string>& out) {
  if (line_.empty()) {  // blank line: dispatch
    if (has_data_) {
      data_.pop_back();  // the \n after the last data field
      out.push_back(std::move(data_));
    }
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line_[0] != ':') {  // ':' starts a comment
    auto colon = line_.find(':');
    std::string_view field(line_.data(), colon == std::string::npos ? line_.size() : colon);
    if (field == "data") {
      std::string_view value;
      if (colon != std::string::npos) {
        value = std::string_view(line_).substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      }
      data_.append(value);
      data_ += '\n';
      has_data_ = true;
    }
  }
  line_.clear();
}

// ---- http_client ---------------------------------------------------------------------

struct http_client::impl {
  std::string host;
  uint16_t port = 0;
  std::string where;  ///< "host:port", for messages
  net::io_context ioc;
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buf;
  bool open = false;
  std::string authorization;  ///< "Bearer KEY" on every request when set

  /// Starts one asynchronous operation with a handler that records its error, and runs
  /// the io_context until it (and the stream's timer) completed.
  template <class Start>
  beast::error_code run(Start&& start) {
    beast::error_code out;
    start([&out](beast::error_code ec, auto&&...) { out = ec; });
    ioc.restart();
    ioc.run();
    return out;
  }

  void close() {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.close();
    buf.clear();
    open = false;
  }

  error_info translate(const beast::error_code& ec, std::string_view what, double timeout_s) {
    if (ec == beast::error::timeout)
      return {errc::timeout, fmt::format("{} {}: no answer within {} s", what, where, timeout_s)};
    return {errc::unavailable, fmt::format("{} {}: {}", what, where, ec.message())};
  }

  std::optional<error_info> open_connection(steady::time_point deadline, double timeout_s) {
    if (open) return std::nullopt;
    tcp::resolver resolver(ioc);
    beast::error_code ec;
    auto addrs = resolver.resolve(host, std::to_string(port), ec);
    if (ec)
      return error_info{errc::unavailable,
                        fmt::format("cannot resolve {}: {}", host, ec.message())};
    stream.expires_at(deadline);
    ec = run([&](auto h) { stream.async_connect(addrs, std::move(h)); });
    if (ec) {
      close();
      return translate(ec, "connect to", timeout_s);
    }
    stream.socket().set_option(tcp::no_delay(true), ec);
    buf.clear();
    open = true;
    return std::nullopt;
  }

  http::request<http::string_body> make_request(http::verb verb, std::string_view target,
                                                std::string_view body,
                                                std::string_view content_type,
                                                const http_headers& headers) {
    http::request<http::string_body> req{verb, beast::string_view(target.data(), target.size()),
                                         11};
    req.set(http::field::host, where);
    req.set(http::field::user_agent, "tokenmill");
    if (!authorization.empty()) req.set(http::field::authorization, authorization);
    if (!body.empty() || verb == http::verb::post || verb == http::verb::put) {
      if (!content_type.empty())
        req.set(http::field::content_type,
                beast::string_view(content_type.data(), content_type.size()));
      req.body().assign(body.data(), body.size());
    }
    for (const auto& [k, v] : headers)
      req.set(k, v);
    req.keep_alive(true);
    req.prepare_payload();
    return req;
  }

  /// Sends `req`, then calls `read(ec_out)` to read the response; retries once on a fresh
  /// connection when a reused one turns out closed before any response byte.
  template <class Read>
  std::optional<error_info> exchange(http::request<http::string_body>& req,
                                     steady::time_point deadline, double timeout_s,
                                     std::string_view what, Read&& read) {
    for (int attempt = 0;; ++attempt) {
      bool reused = open;
      if (auto e = open_connection(deadline, timeout_s)) return e;
      stream.expires_at(deadline);
      auto ec = run([&](auto h) { http::async_write(stream, req, std::move(h)); });
      bool got_any = false;
      if (!ec) ec = read(got_any);
      if (!ec) return std::nullopt;
      close();
      if (reused && attempt == 0 && !got_any && closed_by_peer(ec)) continue;
      return translate(ec, what, timeout_s);
    }
  }
};

http_client::http_client(std::unique_ptr<impl> i) : impl_(std::move(i)) {}
http_client::~http_client() {
  if (impl_ && impl_->open) impl_->close();
}

void http_client::set_api_key(const std::string& key) {
  impl_->authorization = key.empty() ? std::string() : "Bearer " + key;
}

result<std::unique_ptr<http_client>> http_client::connect(const std::string& host, uint16_t port,
                                                          double timeout_s) {
  auto i = std::make_unique<impl>();
  i->host = host;
  i->port = port;
  i->where = fmt::format("{}:{}", host, port);
  if (auto e = i->open_connection(deadline_after(timeout_s), timeout_s)) return *e;
  return std::unique_ptr<http_client>(new http_client(std::move(i)));
}

result<http_response> http_client::request(std::string_view method, std::string_view target,
                                           std::string_view body, std::string_view content_type,
                                           const http_headers& headers, double timeout_s) {
  auto& i = *impl_;
  auto verb = http::string_to_verb(beast::string_view(method.data(), method.size()));
  if (verb == http::verb::unknown)
    return error_info{errc::invalid_request, fmt::format("'{}' is not an HTTP method", method)};
  auto req = i.make_request(verb, target, body, content_type, headers);
  auto what = fmt::format("{} {} at", method, target);
  auto deadline = deadline_after(timeout_s);
  http_response out;
  std::optional<http::response_parser<http::string_body>> parser;
  auto err = i.exchange(req, deadline, timeout_s, what, [&](bool& got_any) {
    parser.emplace();
    parser->body_limit(uint64_t{1} << 30);
    auto ec = i.run([&](auto h) { http::async_read(i.stream, i.buf, *parser, std::move(h)); });
    got_any = parser->got_some();
    return ec;
  });
  if (err) return *err;
  auto msg = parser->release();
  out.status = static_cast<int>(msg.result_int());
  copy_headers(msg, out);
  out.body = std::move(msg.body());
  if (!msg.keep_alive()) i.close();
  return out;
}

result<http_response> http_client::post_sse(
    std::string_view target, std::string_view json_body,
    const std::function<void(std::string_view, int64_t)>& on_event, double timeout_s) {
  auto& i = *impl_;
  auto req = i.make_request(http::verb::post, target, json_body, "application/json",
                            {{"Accept", "text/event-stream"}});
  auto what = fmt::format("POST {} at", target);
  auto deadline = deadline_after(timeout_s);
  http_response out;
  bool ended_by_close = false;
  std::optional<http::response_parser<http::buffer_body>> parser;
  auto err = i.exchange(req, deadline, timeout_s, what, [&](bool& got_any) {
    out = {};
    parser.emplace();
    parser->body_limit(std::numeric_limits<uint64_t>::max());  // boost::none misbehaves in 1.74
    auto ec =
        i.run([&](auto h) { http::async_read_header(i.stream, i.buf, *parser, std::move(h)); });
    got_any = parser->got_some();
    if (ec) return ec;
    const auto& head = parser->get();
    out.status = static_cast<int>(head.result_int());
    copy_headers(head, out);
    auto ctype = out.header("content-type");
    bool sse = ctype.substr(0, 17) == "text/event-stream";
    sse_parser events;
    std::array<char, 16384> tmp;
    while (!parser->is_done()) {
      parser->get().body().data = tmp.data();
      parser->get().body().size = tmp.size();
      ec = i.run([&](auto h) { http::async_read_some(i.stream, i.buf, *parser, std::move(h)); });
      if (ec == http::error::need_buffer) ec = {};
      size_t n = tmp.size() - parser->get().body().size;
      if (n > 0) {
        if (sse) {
          int64_t t = now_ns();
          for (const auto& d : events.feed({tmp.data(), n}))
            on_event(d, t);
        } else {
          out.body.append(tmp.data(), n);
        }
      }
      if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
          ec == net::error::eof) {
        ended_by_close = true;  // the server closed the connection: the stream's end
        return beast::error_code{};
      }
      if (ec) return ec;
    }
    return beast::error_code{};
  });
  if (err) return *err;
  if (ended_by_close || !parser->is_done() || !parser->keep_alive()) i.close();
  return out;
}

}  // namespace tokenmill
