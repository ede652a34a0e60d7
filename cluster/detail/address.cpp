#include "cluster/detail/address.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

namespace tokenmill::detail {
namespace {

/// An owned socket (STYLE.md §5).
class socket_fd {
 public:
  explicit socket_fd(int fd) : fd_(fd) {}
  socket_fd(const socket_fd&) = delete;
  socket_fd& operator=(const socket_fd&) = delete;
  ~socket_fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool is_ipv4(const std::string& s) {
  in_addr a{};
  return inet_pton(AF_INET, s.c_str(), &a) == 1;
}

bool is_ipv6(const std::string& s) {
  in6_addr a{};
  return inet_pton(AF_INET6, s.c_str(), &a) == 1;
}

bool is_host_name(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  // All digits and dots is an attempt at an IPv4 address, which is_ipv4 already refused.
  if (std::all_of(s.begin(), s.end(),
                  [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; }))
    return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('.', start);
    if (end == std::string_view::npos) end = s.size();
    auto label = s.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-')
      return false;
    if (!std::all_of(label.begin(), label.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
        }))
      return false;
    start = end + 1;
  }
  return true;
}

bool is_address(const std::string& s) {
  return is_ipv4(s) || is_ipv6(s) || is_host_name(s);
}

bool is_local_address(const std::string& s) {
  if (lower(s) == "localhost") return true;
  in_addr a{};
  if (inet_pton(AF_INET, s.c_str(), &a) == 1) return (ntohl(a.s_addr) >> 24) == 127;
  return s == "::1";
}

bool is_wildcard(const std::string& s) {
  return s == "0.0.0.0" || s == "::";
}

std::string normal_host(const std::string& s) {
  auto l = lower(s);
  return l == "localhost" ? std::string("127.0.0.1") : l;
}

std::string try_bind(const std::string& host, uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto h = lower(host) == "localhost" ? std::string("127.0.0.1") : host;
  if (is_ipv6(h)) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, h.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, h.c_str(), &a->sin_addr) != 1) return "not a local IP address";
    len = sizeof(*a);
  }
  socket_fd s(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return std::strerror(errno);
  int one = 1;
  ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return std::strerror(errno);
  return {};
}

}  // namespace tokenmill::detail
