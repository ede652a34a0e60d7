#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>

#include "frontend/http_client.hpp"

using namespace tokenmill;

namespace {

std::vector<std::string> feed_all(sse_parser& p, const std::vector<std::string_view>& parts) {
  std::vector<std::string> out;
  for (auto part : parts) {
    auto ev = p.feed(part);
    out.insert(out.end(), ev.begin(), ev.end());
  }
  return out;
}

/// A scripted HTTP/1.1 server on 127.0.0.1 for the client tests: each request (headers
/// and Content-Length body) is answered by `handler` with pieces written in order, with
/// a pause before each. It counts the connections it accepted.
class script_server {
 public:
  struct piece {
    std::string bytes;
    int delay_ms = 0;
  };
  struct answer {
    std::vector<piece> pieces;
    bool close = false;  ///< close the connection after answering
  };
  using handler = std::function<answer(const std::string& request)>;

  explicit script_server(handler h) : handler_(std::move(h)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    REQUIRE(::listen(listen_fd_, 8) == 0);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~script_server() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }
  uint16_t port() const { return port_; }
  int connections() const { return connections_; }
  std::string last_request() {
    std::lock_guard lock(m_);
    return last_request_;
  }

 private:
  /// Waits up to 50 ms for `fd` to become readable.
  static bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 50) > 0;
  }

  void loop() {
    while (!stop_) {
      if (!readable(listen_fd_)) continue;
      int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      int one = 1;  // no Nagle: each piece leaves when written, as the tests expect
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ++connections_;
      serve(fd);
      ::close(fd);
    }
  }

  void serve(int fd) {
    std::string buf;
    while (!stop_) {
      auto end = buf.find("\r\n\r\n");
      if (end != std::string::npos) {
        size_t body = 0;
        auto cl = buf.find("Content-Length: ");
        if (cl != std::string::npos && cl < end) body = std::stoul(buf.substr(cl + 16));
        if (buf.size() >= end + 4 + body) {
          std::string req = buf.substr(0, end + 4 + body);
          buf.erase(0, req.size());
          {
            std::lock_guard lock(m_);
            last_request_ = req;
          }
          auto a = handler_(req);
          for (const auto& p : a.pieces) {
            if (p.delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(p.delay_ms));
            if (::send(fd, p.bytes.data(), p.bytes.size(), MSG_NOSIGNAL) < 0) return;
          }
          if (a.close) return;
          continue;
        }
      }
      if (!readable(fd)) continue;
      char tmp[4096];
      auto n = ::recv(fd, tmp, sizeof tmp, 0);
      if (n <= 0) return;
      buf.append(tmp, static_cast<size_t>(n));
    }
  }

  handler handler_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::mutex m_;
  std::string last_request_;
};

std::string chunk(const std::string& s) {
  char head[32];
  std::snprintf(head, sizeof head, "%zx\r\n", s.size());
  return head + s + "\r\n";
}

script_server::answer json_answer(int status, const std::string& body, bool close = false) {
  std::string head =
      "HTTP/1.1 " + std::to_string(status) +
      " X\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\n";
  if (close) head += "Connection: close\r\n";
  return {{{head + "\r\n" + body, 0}}, close};
}

}  // namespace

TEST_CASE("sse_parser: events, line endings, multi-line data, comments", "[http_client]") {
  sse_parser p;
  SECTION("\\n and \\r\\n line endings, [DONE]") {
    auto ev = feed_all(p, {"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n"});
    CHECK(ev == std::vector<std::string>{"{\"a\":1}", "{\"b\":2}", "[DONE]"});
  }
  SECTION("bare \\r line endings") {
    CHECK(feed_all(p, {"data: x\r\rdata: y\r\r"}) == std::vector<std::string>{"x", "y"});
  }
  SECTION("multi-line data is joined with \\n") {
    CHECK(feed_all(p, {"data: one\ndata: two\ndata:three\n\n"}) ==
          std::vector<std::string>{"one\ntwo\nthree"});
  }
  SECTION("comments and other fields are ignored; only one leading space is dropped") {
    auto ev = feed_all(p, {": keep-alive\n\nevent: message\nid: 7\nretry: 100\ndata:  two spaces\n"
                           ": in the middle\n\n"});
    CHECK(ev == std::vector<std::string>{" two spaces"});
  }
  SECTION("a blank line without data dispatches nothing; empty data is an event") {
    CHECK(feed_all(p, {"\n\n\r\n"}).empty());
    CHECK(feed_all(p, {"data\n\n"}) == std::vector<std::string>{""});
    CHECK(feed_all(p, {"data:\n\n"}) == std::vector<std::string>{""});
  }
  SECTION("an unfinished event waits for its blank line") {
    CHECK(feed_all(p, {"data: a\n"}).empty());
    CHECK(feed_all(p, {"\n"}) == std::vector<std::string>{"a"});
  }
}

TEST_CASE("sse_parser: the same events whichever byte the stream is split at", "[http_client]") {
  const std::string crlf =
      "data: {\"t\":\"a\"}\r\n\r\n: ping\r\ndata: x\r\ndata: y\r\n\r\n"
      "data: [DONE]\r\n\r\n";
  const std::string lf = "data: {\"t\":\"a\"}\n\n: ping\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
  const std::vector<std::string> want{"{\"t\":\"a\"}", "x\ny", "[DONE]"};
  for (const auto* s : {&crlf, &lf}) {
    for (size_t cut = 0; cut <= s->size(); ++cut) {
      INFO("split at " << cut);
      sse_parser p;
      std::string_view v(*s);
      CHECK(feed_all(p, {v.substr(0, cut), v.substr(cut)}) == want);
    }
    for (size_t a = 0; a <= s->size(); a += 3)
      for (size_t b = a; b <= s->size(); b += 5) {
        sse_parser p;
        std::string_view v(*s);
        CHECK(feed_all(p, {v.substr(0, a), v.substr(a, b - a), v.substr(b)}) == want);
      }
    sse_parser p;
    std::vector<std::string> ev;
    for (char c : *s) {  // one byte at a time
      auto e = p.feed(std::string_view(&c, 1));
      ev.insert(ev.end(), e.begin(), e.end());
    }
    CHECK(ev == want);
  }
}

TEST_CASE("http_client: requests over one kept-alive connection", "[http_client]") {
  script_server srv([](const std::string& req) {
    if (req.rfind("POST /echo", 0) == 0)
      return json_answer(200, req.substr(req.find("\r\n\r\n") + 4));
    return json_answer(404, R"({"error":{"message":"no such route"}})");
  });
  auto c = http_client::connect("127.0.0.1", srv.port(), 5);
  REQUIRE(c);
  auto r = (*c)->request("POST", "/echo", R"({"x":1})", "application/json", {{"X-Test", "yes"}});
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->body == R"({"x":1})");
  CHECK(r->header("content-type") == "application/json");
  CHECK(r->header("CONTENT-LENGTH") == "7");
  CHECK(r->header("missing").empty());
  CHECK(srv.last_request().find("X-Test: yes") != std::string::npos);
  r = (*c)->request("GET", "/nothing");
  REQUIRE(r);
  CHECK(r->status == 404);
  CHECK(srv.connections() == 1);
  CHECK_FALSE((*c)->request("NOT A METHOD", "/"));
}

TEST_CASE("http_client: a connection the server closed is reopened", "[http_client]") {
  script_server srv([](const std::string&) { return json_answer(200, "{}", true); });
  auto c = http_client::connect("127.0.0.1", srv.port(), 5);
  REQUIRE(c);
  for (int i = 0; i < 3; ++i) {
    auto r = (*c)->request("GET", "/");
    REQUIRE(r);
    CHECK(r->status == 200);
  }
  CHECK(srv.connections() == 3);
}

TEST_CASE("http_client: errors are unavailable or timeout", "[http_client]") {
  SECTION("nothing listens") {
    uint16_t port = 0;
    {
      script_server gone([](const std::string&) { return script_server::answer{}; });
      port = gone.port();
    }
    auto c = http_client::connect("127.0.0.1", port, 2);
    REQUIRE_FALSE(c);
    CHECK(c.error().code == errc::unavailable);
    CHECK(c.error().message.find(std::to_string(port)) != std::string::npos);
  }
  SECTION("the server does not answer in time") {
    script_server srv([](const std::string&) {
      return script_server::answer{{{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 800}}};
    });
    auto c = http_client::connect("127.0.0.1", srv.port(), 5);
    REQUIRE(c);
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*c)->request("GET", "/", {}, {}, {}, 0.2);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::timeout);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1500));
    bool called = false;
    auto s = (*c)->post_sse(
        "/", "{}", [&](std::string_view, int64_t) { called = true; }, 0.2);
    REQUIRE_FALSE(s);
    CHECK(s.error().code == errc::timeout);
  }
}

TEST_CASE("http_client: post_sse streams the events of a chunked response", "[http_client]") {
  script_server srv([](const std::string& req) -> script_server::answer {
    if (req.find("\"fail\"") != std::string::npos)
      return json_answer(400, R"({"error":{"message":"bad prompt"}})");
    std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    return {{{head, 0},
             {chunk("data: {\"n\":1}\n\nda"), 0},
             {chunk("ta: {\"n\":2}\n"), 30},
             {chunk("\n: comment\n\ndata: [DONE]\n\n"), 30},
             {"0\r\n\r\n", 0}}};
  });
  auto c = http_client::connect("127.0.0.1", srv.port(), 5);
  REQUIRE(c);
  for (int round = 0; round < 2; ++round) {  // the connection is reused after the stream
    std::vector<std::string> events;
    std::vector<int64_t> times;
    auto r =
        (*c)->post_sse("/v1/completions", R"({"stream":true})", [&](std::string_view d, int64_t t) {
          events.emplace_back(d);
          times.push_back(t);
        });
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body.empty());
    CHECK(events == std::vector<std::string>{"{\"n\":1}", "{\"n\":2}", "[DONE]"});
    REQUIRE(times.size() == 3);
    // Each event is stamped when its last byte arrived: the second (completed by the chunk
    // that also carries [DONE]) at least the server's two 30 ms pauses after the first.
    // The two last stamps are not compared for equality: a loaded machine may hand the
    // last chunk over in two reads.
    CHECK(times[1] - times[0] >= 50'000'000);
    CHECK(times[2] >= times[1]);
  }
  CHECK(srv.connections() == 1);
  CHECK(srv.last_request().find("Accept: text/event-stream") != std::string::npos);

  SECTION("an error response keeps its body") {
    bool called = false;
    auto r = (*c)->post_sse("/v1/completions", R"({"prompt":"fail"})",
                            [&](std::string_view, int64_t) { called = true; });
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(r->body == R"({"error":{"message":"bad prompt"}})");
    CHECK_FALSE(called);
  }
}

TEST_CASE("http_client: post_sse ends at the connection's close", "[http_client]") {
  script_server srv([](const std::string&) -> script_server::answer {
    return {{{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n", 0},
             {"data: a\r\n\r\n", 10},
             {"data: b\r\n\r\n", 10}},
            true};
  });
  auto c = http_client::connect("127.0.0.1", srv.port(), 5);
  REQUIRE(c);
  for (int round = 0; round < 2; ++round) {
    std::vector<std::string> events;
    auto r =
        (*c)->post_sse("/", "{}", [&](std::string_view d, int64_t) { events.emplace_back(d); });
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(events == std::vector<std::string>{"a", "b"});
  }
  CHECK(srv.connections() == 2);
}
