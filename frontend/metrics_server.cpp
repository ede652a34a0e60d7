#include "frontend/metrics_server.hpp"

#include <sys/socket.h>

#include <atomic>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace tokenmill {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct metrics_server::impl {
  std::string host;
  uint16_t port;
  std::function<std::string()> collect;
  asio::io_context io{1};
  std::optional<tcp::acceptor> acceptor;
  std::thread thread;
  std::atomic<bool> stopping{false};

  void serve_one(tcp::socket& sock) {
    beast::error_code ec;
    sock.set_option(tcp::no_delay(true), ec);
    // A client that sends nothing must not hold the only thread.
    timeval tv{2, 0};
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    beast::flat_buffer buf;
    http::request_parser<http::empty_body> parser;
    parser.header_limit(16 << 10);
    http::read(sock, buf, parser, ec);
    http::response<http::string_body> res;
    res.version(11);
    res.keep_alive(false);
    res.set(http::field::server, "tokenmill");
    if (ec) {
      res.result(http::status::bad_request);
      res.set(http::field::content_type, "text/plain");
      res.body() = "malformed HTTP request: " + ec.message() + "\n";
    } else {
      auto& req = parser.get();
      std::string_view target(req.target().data(), req.target().size());
      target = target.substr(0, target.find('?'));
      if (req.method() != http::verb::get) {
        res.result(http::status::method_not_allowed);
        res.set(http::field::allow, "GET");
        res.body() = "only GET is allowed\n";
      } else if (target == "/metrics") {
        res.result(http::status::ok);
        res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        res.body() = collect();
      } else if (target == "/health") {
        res.result(http::status::ok);
        res.set(http::field::content_type, "application/json");
        res.body() = R"({"status":"ok"})";
      } else {
        res.result(http::status::not_found);
        res.set(http::field::content_type, "text/plain");
        res.body() = fmt::format(
            "no such endpoint: {} (this node serves /metrics and /health; "
            "the OpenAI API is on the frontend's node)\n",
            target);
      }
    }
    res.prepare_payload();
    http::write(sock, res, ec);
    sock.shutdown(tcp::socket::shutdown_both, ec);
  }

  void run() {
    while (!stopping) {
      beast::error_code ec;
      tcp::socket sock(io);
      acceptor->accept(sock, ec);
      if (stopping) break;
      if (ec) {
        spdlog::warn("metrics server: accept failed: {}", ec.message());
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      try {
        serve_one(sock);
      } catch (const std::exception& e) {
        spdlog::warn("metrics server: {}", e.what());
      }
    }
  }
};

metrics_server::metrics_server(std::string host, uint16_t port,
                               std::function<std::string()> collect)
    : impl_(std::make_unique<impl>()) {
  impl_->host = std::move(host);
  impl_->port = port;
  impl_->collect = std::move(collect);
}

metrics_server::~metrics_server() {
  stop();
}

result<uint16_t> metrics_server::start() {
  auto& s = *impl_;
  try {
    // A host name (a manifest node's address may be one) binds the address it resolves to.
    tcp::resolver resolver(s.io);
    tcp::endpoint ep = *resolver
                            .resolve(s.host, std::to_string(s.port),
                                     tcp::resolver::passive | tcp::resolver::numeric_service)
                            .begin();
    s.acceptor.emplace(s.io);
    s.acceptor->open(ep.protocol());
    s.acceptor->set_option(asio::socket_base::reuse_address(true));
    s.acceptor->bind(ep);
    s.acceptor->listen();
  } catch (const std::exception& e) {
    s.acceptor.reset();
    return error_info{errc::invalid_request, fmt::format("cannot listen on {}:{} (metrics): {}",
                                                         s.host, s.port, e.what())};
  }
  auto port = s.acceptor->local_endpoint().port();
  s.thread = std::thread([&s] { s.run(); });
  return port;
}

void metrics_server::stop() {
  auto& s = *impl_;
  if (!s.thread.joinable()) return;
  s.stopping = true;
  // Wake the blocking accept() by shutting the listening socket down.
  ::shutdown(s.acceptor->native_handle(), SHUT_RDWR);
  s.thread.join();
  beast::error_code ignored;
  s.acceptor->close(ignored);
}

}  // namespace tokenmill
