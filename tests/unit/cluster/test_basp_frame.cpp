// The control port's BASP check (cluster/basp_frame.hpp) and the gate that applies it
// (cluster/control_gate.hpp), against hand-built frames, random bytes and a loopback
// upstream that records what reached it.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "cluster/basp_frame.hpp"
#include "cluster/control_gate.hpp"

using namespace tokenmill;

namespace {

std::vector<uint8_t> frame(basp_op op, std::vector<uint8_t> payload, uint8_t flags = 0) {
  basp_header h;
  h.operation = static_cast<uint8_t>(op);
  h.flags = flags;
  h.payload_len = static_cast<uint32_t>(payload.size());
  h.dest_actor = 7;
  auto out = serialize_basp_header(h);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<uint8_t> handshake() {
  return frame(basp_op::client_handshake, std::vector<uint8_t>(40, 0xab));
}

std::vector<uint8_t> cat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("basp: a header round-trips in CAF's byte order", "[basp]") {
  basp_header h;
  h.operation = 2;
  h.flags = 1;
  h.payload_len = 0x01020304;
  h.operation_data = 0x1122334455667788;
  h.source_actor = 9;
  h.dest_actor = 0xffffffffffffffff;
  auto bytes = serialize_basp_header(h);
  REQUIRE(bytes.size() == basp_header_size);
  CHECK(bytes[4] == 0x01);  // network byte order
  CHECK(bytes[7] == 0x04);
  auto back = parse_basp_header(std::span<const uint8_t, basp_header_size>(bytes.data(), 32));
  CHECK(back.operation == 2);
  CHECK(back.flags == 1);
  CHECK(back.payload_len == 0x01020304);
  CHECK(back.operation_data == 0x1122334455667788);
  CHECK(back.source_actor == 9);
  CHECK(back.dest_actor == 0xffffffffffffffff);
}

TEST_CASE("basp: a handshake and messages pass whole, split at any byte", "[basp]") {
  auto stream = cat(cat(cat(handshake(), frame(basp_op::direct_message, {1, 2, 3})),
                        frame(basp_op::heartbeat, {})),
                    frame(basp_op::routed_message, std::vector<uint8_t>(1000, 5)));
  for (size_t split : {size_t{1}, size_t{7}, size_t{32}, size_t{33}, size_t{100}, stream.size()}) {
    basp_inbound_check check;
    std::vector<uint8_t> out;
    for (size_t at = 0; at < stream.size(); at += split) {
      auto n = std::min(split, stream.size() - at);
      size_t before = out.size();
      REQUIRE(check.feed(std::span<const uint8_t>(stream.data() + at, n), out).empty());
      // Only whole frames come out: never a header without its payload.
      if (out.size() != before) CHECK(check.buffered() == (at + n) - out.size());
    }
    CHECK(out == stream);
    CHECK(check.handshaken());
    CHECK(check.buffered() == 0);
    // The peer's node id, for binding its certificate to its name at join.
    CHECK(check.handshake_payloads() ==
          std::vector<std::vector<uint8_t>>{std::vector<uint8_t>(40, 0xab)});
  }
}

TEST_CASE("basp: repeated client handshakes pass, each node id recorded once", "[basp]") {
  // CAF may send more than one client handshake on a connection; the gate must not cut
  // the BASP exchange for it. Each distinct node id is bound to the link's certificate.
  auto other = frame(basp_op::client_handshake, std::vector<uint8_t>(40, 0xcd));
  auto stream = cat(cat(cat(handshake(), frame(basp_op::direct_message, {1})), handshake()), other);
  basp_inbound_check check;
  std::vector<uint8_t> out;
  REQUIRE(check.feed(stream, out).empty());
  CHECK(out == stream);
  CHECK(check.handshake_payloads() ==
        std::vector<std::vector<uint8_t>>{std::vector<uint8_t>(40, 0xab),
                                          std::vector<uint8_t>(40, 0xcd)});
  // A connection naming more node ids than any CAF peer does is refused.
  basp_limits one;
  one.max_handshake_ids = 1;
  basp_inbound_check strict(one);
  std::vector<uint8_t> out2;
  CHECK(strict.feed(cat(handshake(), handshake()), out2).empty());
  CHECK_THAT(strict.feed(other, out2), Catch::Contains("more than 1 node ids"));
  CHECK(out2 == cat(handshake(), handshake()));  // the refused handshake was not forwarded
}

TEST_CASE("basp: what a connecting peer may not send", "[basp]") {
  struct bad_case {
    const char* name;
    std::vector<uint8_t> bytes;
    const char* why;
  };
  basp_header huge;
  huge.operation = static_cast<uint8_t>(basp_op::direct_message);
  huge.payload_len = 0xffffffff;
  basp_header padded;
  padded.operation = static_cast<uint8_t>(basp_op::client_handshake);
  padded.padding1 = 1;
  padded.payload_len = 4;
  std::vector<bad_case> cases = {
      {"a message before the handshake", frame(basp_op::direct_message, {1}), "client handshake"},
      {"a server handshake", frame(basp_op::server_handshake, {1}), "client handshake first"},
      {"an unknown operation", std::vector<uint8_t>(32, 0x41), "unknown BASP operation"},
      {"a handshake without payload", frame(basp_op::client_handshake, {}),
       "client handshake of 0"},
      {"a handshake of 64 KiB", frame(basp_op::client_handshake, std::vector<uint8_t>(65536, 1)),
       "client handshake of 65536"},
      {"non-zero padding", serialize_basp_header(padded), "padding"},
      {"unknown flags", frame(basp_op::client_handshake, {1}, 0x80), "unknown BASP flags"},
      {"a 4 GiB frame after the handshake", cat(handshake(), serialize_basp_header(huge)),
       "at most"},
      {"a heartbeat with payload", cat(handshake(), frame(basp_op::heartbeat, {1})),
       "heartbeat with a 1-byte payload"},
      {"a message without payload", cat(handshake(), frame(basp_op::monitor_message, {})),
       "without payload"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    basp_inbound_check check;
    std::vector<uint8_t> out;
    auto why = check.feed(c.bytes, out);
    CHECK_THAT(why, Catch::Contains(c.why));
    // Nothing after the bad header reaches the middleman, and the verdict sticks.
    CHECK(out.size() == (c.bytes.size() > 32 && check.handshaken() ? handshake().size() : 0));
    CHECK(check.feed(handshake(), out) == why);
  }
}

TEST_CASE("basp: random bytes are refused without buffering what they announce", "[basp]") {
  std::mt19937 rng(42);
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> bytes(basp_header_size + rng() % 4096);
    for (auto& b : bytes)
      b = static_cast<uint8_t>(rng());
    basp_inbound_check check;
    std::vector<uint8_t> out;
    auto why = check.feed(bytes, out);
    refused += !why.empty();
    CHECK(out.empty());
    CHECK(check.buffered() <= bytes.size());
  }
  // A random header passes only if it looks like a small client handshake: operation 1,
  // zero padding, known flags (about one in 2^26).
  CHECK(refused == 2000);
}

namespace {

/// A loopback listener standing in for the middleman: accepts one connection, sends
/// `greeting`, then records everything it reads until the peer closes.
struct fake_upstream {
  int listen_fd = -1;
  uint16_t port = 0;
  std::vector<uint8_t> received;
  std::thread thread;

  explicit fake_upstream(std::vector<uint8_t> greeting) {
    listen_fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(listen_fd, 8) == 0);
    socklen_t len = sizeof(a);
    ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    thread = std::thread([this, greeting] {
      int fd = ::accept(listen_fd, nullptr, nullptr);
      if (fd < 0) return;
      (void)!::write(fd, greeting.data(), greeting.size());
      uint8_t buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;)
        received.insert(received.end(), buf, buf + n);
      ::close(fd);
    });
  }
  ~fake_upstream() {
    ::shutdown(listen_fd, SHUT_RDWR);
    ::close(listen_fd);
    if (thread.joinable()) thread.join();
  }
};

int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

/// Reads until `n` bytes or EOF/error; returns what it got.
std::vector<uint8_t> read_n(int fd, size_t n) {
  std::vector<uint8_t> out;
  uint8_t buf[4096];
  while (out.size() < n) {
    ssize_t r = ::read(fd, buf, std::min(sizeof(buf), n - out.size()));
    if (r <= 0) break;
    out.insert(out.end(), buf, buf + r);
  }
  return out;
}

}  // namespace

TEST_CASE("control gate: relays BASP both ways and closes a connection of garbage",
          "[basp][control_gate]") {
  std::vector<uint8_t> greeting = frame(basp_op::server_handshake, {9, 9, 9});
  fake_upstream up(greeting);
  control_gate_config cfg;
  cfg.host = "127.0.0.1";
  cfg.upstream_port = up.port;
  control_gate gate(cfg);
  auto port = gate.start();
  REQUIRE(port);

  SECTION("a well-formed peer") {
    int fd = connect_to(*port);
    CHECK(read_n(fd, greeting.size()) == greeting);  // the middleman's handshake comes through
    auto sent = cat(handshake(), frame(basp_op::direct_message, std::vector<uint8_t>(5000, 3)));
    REQUIRE(::write(fd, sent.data(), sent.size()) == static_cast<ssize_t>(sent.size()));
    ::close(fd);
    up.thread.join();
    CHECK(up.received == sent);
    CHECK(gate.stats().rejected == 0);
  }
  SECTION("random bytes") {
    int fd = connect_to(*port);
    std::vector<uint8_t> junk(4096);
    std::mt19937 rng(7);
    for (auto& b : junk)
      b = static_cast<uint8_t>(rng() | 0x80);  // operation >= 0x80: never a BASP frame
    REQUIRE(::write(fd, junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    read_n(fd, greeting.size());
    // The gate closes the connection: a read reaches EOF (or a reset) instead of blocking.
    uint8_t b;
    CHECK(::read(fd, &b, 1) <= 0);
    ::close(fd);
    up.thread.join();
    CHECK(up.received.empty());  // not one byte reached the middleman
    CHECK(gate.stats().rejected == 1);
  }
  gate.stop();
}

TEST_CASE("control gate: a peer that sends no handshake is closed after the timeout",
          "[basp][control_gate]") {
  fake_upstream up({});
  control_gate_config cfg;
  cfg.host = "127.0.0.1";
  cfg.upstream_port = up.port;
  cfg.handshake_timeout = std::chrono::milliseconds(100);
  control_gate gate(cfg);
  auto port = gate.start();
  REQUIRE(port);
  int fd = connect_to(*port);
  uint8_t b;
  CHECK(::read(fd, &b, 1) <= 0);  // closed by the gate (SO_RCVTIMEO is 5 s)
  ::close(fd);
  up.thread.join();
  CHECK(gate.stats().timed_out == 1);
}
