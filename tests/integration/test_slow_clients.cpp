// Slow and hostile clients of `tokenmill serve` (issue 20, item 5): HTTP headers trickled a
// byte at a time (slowloris), an HTTP client that never reads its SSE stream, an RPC client
// that stops taking its token stream. Each is cut off by its timeout (set short here), its
// request is cancelled (no KV block stays held), and the server serves others meanwhile.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "frontend/client.hpp"
#include "frontend/http_client.hpp"
#include "harness.hpp"

using namespace tokenmill;
using namespace tokenmill::testing;
using namespace std::chrono;
using json = nlohmann::json;

namespace {

/// A TCP connection to 127.0.0.1:port; `rcvbuf` > 0 sets SO_RCVBUF before connecting (so
/// the window the client offers stays that small).
int open_connection(uint16_t port, int rcvbuf = 0) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  return fd;
}

/// Whether the peer closed `fd` (EOF or reset), after reading whatever it had sent.
bool closed_by_peer(int fd) {
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    auto n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK;
  }
}

/// A completion over HTTP on a fresh connection: its status.
int http_completion(uint16_t port) {
  auto c = http_client::connect("127.0.0.1", port, 5);
  REQUIRE(c.ok());
  auto r = (*c)->request("POST", "/v1/completions", R"({"prompt": "Hello", "max_tokens": 4})",
                         "application/json", {}, 15);
  REQUIRE(r.ok());
  return r->status;
}

/// The value of the `tokenmill_requests_total` series with these api and outcome labels.
double requests_total(uint16_t http_port, const std::string& api, const std::string& outcome) {
  auto c = http_client::connect("127.0.0.1", http_port, 5);
  REQUIRE(c.ok());
  auto r = (*c)->request("GET", "/metrics");
  REQUIRE(r.ok());
  const std::string head = "tokenmill_requests_total{";
  double total = 0;
  size_t at = 0;
  while ((at = r->body.find(head, at)) != std::string::npos) {
    auto end = r->body.find('\n', at);
    auto line = r->body.substr(at, end - at);
    at = end;
    if (line.find("api=\"" + api + "\"") == std::string::npos ||
        line.find("outcome=\"" + outcome + "\"") == std::string::npos)
      continue;
    total += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return total;
}

}  // namespace

TEST_CASE("slowloris: HTTP headers trickled a byte at a time are cut off at the header timeout",
          "[integration][http][slow]") {
  server srv{{"--http-header-timeout", "2"}};
  // Ten connections that send a request's headers one byte every 200 ms, never ending them.
  const std::string head =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(200, 'a');
  std::vector<int> slow;
  for (int i = 0; i < 10; ++i)
    slow.push_back(open_connection(srv.http_port()));
  std::vector<bool> closed(slow.size(), false);
  const auto start = steady_clock::now();
  size_t sent = 0, open = slow.size();
  bool served_meanwhile = false;
  while (open > 0 && steady_clock::now() - start < seconds(15) && sent < head.size()) {
    for (size_t i = 0; i < slow.size(); ++i) {
      if (closed[i]) continue;
      if (closed_by_peer(slow[i]) ||
          ::send(slow[i], head.data() + sent, 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        closed[i] = true;
        --open;
      }
    }
    ++sent;
    // The server answers others while the slow connections are open.
    if (!served_meanwhile && open == slow.size())
      served_meanwhile = http_completion(srv.http_port()) == 200;
    std::this_thread::sleep_for(milliseconds(200));
  }
  const double took = duration<double>(steady_clock::now() - start).count();
  INFO("slow connections still open: " << open << " after " << took << " s, " << sent
                                       << " bytes each");
  CHECK(served_meanwhile);
  // Each kept sending, so only the header timeout (2 s; the idle timeout is 60 s) closed them.
  CHECK(open == 0);
  for (int fd : slow)
    ::close(fd);
  CHECK(http_completion(srv.http_port()) == 200);
}

TEST_CASE("an HTTP client that never reads its SSE stream is dropped and its request cancelled",
          "[integration][http][slow]") {
  // 3000 tokens at 5 ms a step would stream for 15 s; the client reads nothing.
  server srv{
      {"--http-write-timeout", "2"}, {"--http-send-buffer", "4096"}, {"--sim-decode-step-ms", "5"}};
  int fd = open_connection(srv.http_port(), 4096);
  const std::string body =
      R"({"prompt": "Hello", "max_tokens": 3000, "ignore_eos": true, "stream": true})";
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
  // The request runs, then the server gives up on the client: the workers are idle again
  // while the client still holds its connection, long before 3000 tokens could have been
  // generated.
  REQUIRE(eventually([&] { return !workers_idle(srv.status()); }, milliseconds(5000)));
  CHECK(http_completion(srv.http_port()) == 200);  // others are served meanwhile
  const auto start = steady_clock::now();
  bool idle = eventually([&] { return workers_idle(srv.status()); }, milliseconds(10000),
                         milliseconds(100));
  INFO("after " << duration<double>(steady_clock::now() - start).count() << " s");
  CHECK(idle);
  CHECK(requests_total(srv.http_port(), "http", "cancelled") == 1);
  ::close(fd);
}

TEST_CASE("an RPC client that stops taking its token stream has its request cancelled",
          "[integration][rpc][slow]") {
  server srv{
      {"--rpc-stream-timeout", "2"}, {"--stream-window", "4096"}, {"--sim-decode-step-ms", "5"}};
  generate_params p;
  p.text = "Hello";
  p.max_tokens = 3000;  // 15 s of tokens at 5 ms a step
  p.ignore_eos = true;
  // The client's event loop stops for 12 s at its first chunk: it reads nothing meanwhile.
  // (A client lives on the thread that made it.)
  std::atomic<bool> stalled{false};
  std::optional<result<client_result>> r;
  std::thread t([&] {
    auto c = client::connect("127.0.0.1", srv.port(), 5);
    if (!c) {
      r = c.error();
      return;
    }
    r = (*c)->generate(
        p,
        [&](const client_chunk&) {
          if (!stalled.exchange(true)) std::this_thread::sleep_for(seconds(12));
        },
        60);
  });
  bool started = eventually([&] { return stalled.load(); }, milliseconds(5000));
  CHECK(started);
  if (started) {
    auto other = srv.generate({"--max-tokens", "4", "Hi"});
    CHECK(other.exit_code == 0);  // others are served meanwhile
    const auto start = steady_clock::now();
    bool idle = eventually([&] { return workers_idle(srv.status()); }, milliseconds(9000),
                           milliseconds(100));
    INFO("after " << duration<double>(steady_clock::now() - start).count() << " s");
    CHECK(idle);  // while the client still sleeps: the server gave up on it
  }
  t.join();
  REQUIRE(r.has_value());
  INFO("generate: " << (r->ok() ? std::string("ok") : r->error().message));
  CHECK_FALSE(r->ok());  // the call failed rather than streaming 3000 tokens
  if (!r->ok()) CHECK_THAT(r->error().message, Catch::Contains("token stream"));
  CHECK(requests_total(srv.http_port(), "rpc", "cancelled") == 1);
}

TEST_CASE("connections over --http-max-connections are closed at once, the others still served",
          "[integration][http][slow]") {
  server srv{{"--http-max-connections", "4"}};
  std::vector<int> idle;
  for (int i = 0; i < 3; ++i)
    idle.push_back(open_connection(srv.http_port()));
  // The fourth slot serves a request; a fifth connection (four open) is closed unanswered.
  auto c = http_client::connect("127.0.0.1", srv.http_port(), 5);
  REQUIRE(c.ok());
  auto r = (*c)->request("GET", "/health");
  REQUIRE(r.ok());
  CHECK(r->status == 200);
  int extra = open_connection(srv.http_port());
  CHECK(eventually([&] { return closed_by_peer(extra); }, milliseconds(5000)));
  ::close(extra);
  for (int fd : idle)
    CHECK_FALSE(closed_by_peer(fd));  // the open ones are untouched
  // Once some close, new connections are served again.
  for (int fd : idle)
    ::close(fd);
  bool served = eventually(
      [&] {
        auto h = http_client::connect("127.0.0.1", srv.http_port(), 5);
        if (!h) return false;
        auto g = (*h)->request("GET", "/health", {}, "application/json", {}, 5);
        return g.ok() && g->status == 200;
      },
      milliseconds(5000), milliseconds(200));
  CHECK(served);
}
