/// libFuzzer target: a running node's control port (cluster/control_gate.hpp in front of
/// CAF's middleman), over TCP. Each input is one connection: the first byte picks how the
/// bytes are cut into writes (1..256 bytes), the rest is what the peer sends (seeds: BASP
/// handshakes and messages, so mutations reach CAF's reading of them through the gate).
/// After sending, the connection is half-closed and the reply read until the node closes it
/// (at most 2 s). Every 200 inputs, and at exit, the node must still be there: its process
/// alive and its port accepting connections; otherwise the target traps (a finding).
/// The node is not started here: scripts/fuzz-control-port.sh launches a cluster and runs
/// this target against its head node's control port.
///   TOKENMILL_FUZZ_CONTROL_PORT  the control port on 127.0.0.1 (required)
///   TOKENMILL_FUZZ_CONTROL_PID   the node's process id (optional: checked when given)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {

struct target {
  uint16_t port = 0;
  pid_t pid = 0;
  uint64_t runs = 0;
};

target& config() {
  static target t = [] {
    target c;
    const char* port = std::getenv("TOKENMILL_FUZZ_CONTROL_PORT");
    if (port == nullptr || std::atoi(port) <= 0 || std::atoi(port) > 65535) {
      std::fprintf(stderr,
                   "fuzz_control_port: set TOKENMILL_FUZZ_CONTROL_PORT to a running node's "
                   "control port (scripts/fuzz-control-port.sh does)\n");
      std::exit(2);
    }
    c.port = static_cast<uint16_t>(std::atoi(port));
    if (const char* pid = std::getenv("TOKENMILL_FUZZ_CONTROL_PID")) c.pid = std::atoi(pid);
    return c;
  }();
  return t;
}

/// A connection to the node's control port, or -1.
int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// The node is alive and accepts connections (a few tries: its backlog may be full for a
/// moment while it closes the connections it refused).
void check_alive(const target& t) {
  if (t.pid > 0 && ::kill(t.pid, 0) != 0) {
    std::fprintf(stderr, "fuzz_control_port: the node (pid %d) is gone\n", t.pid);
    __builtin_trap();
  }
  for (int attempt = 0; attempt < 50; ++attempt) {
    int fd = connect_to(t.port);
    if (fd >= 0) {
      ::close(fd);
      return;
    }
    ::usleep(100 * 1000);
  }
  std::fprintf(stderr, "fuzz_control_port: port %u accepts no connection for 5 s\n", t.port);
  __builtin_trap();
}

void check_at_exit() {
  check_alive(config());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ::signal(SIGPIPE, SIG_IGN);
  check_alive(config());
  std::atexit(check_at_exit);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto& t = config();
  if (++t.runs % 200 == 0) check_alive(t);
  if (size == 0) return 0;
  const size_t chunk = size_t{data[0]} + 1;
  int fd = connect_to(t.port);
  if (fd < 0) {
    check_alive(t);  // traps if the node stopped accepting
    return 0;
  }
  for (size_t off = 1; off < size;) {
    auto n = ::send(fd, data + off, std::min(chunk, size - off), MSG_NOSIGNAL);
    if (n <= 0) break;  // the node closed the connection (it refused the bytes)
    off += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  // Read until the node closes its end, so that the node, not this side, holds TIME_WAIT.
  char sink[4096];
  for (int rounds = 0; rounds < 64; ++rounds) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) break;
    auto n = ::recv(fd, sink, sizeof(sink), 0);
    if (n <= 0) break;
  }
  ::close(fd);
  return 0;
}
