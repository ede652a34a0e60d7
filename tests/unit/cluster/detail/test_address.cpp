// The manifest's address checks and port probe as plain functions.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cluster/detail/address.hpp"

using namespace tokenmill::detail;

TEST_CASE("address: IP addresses and RFC 1123 host names", "[manifest_address]") {
  CHECK(is_address("10.0.0.1"));
  CHECK(is_address("::1"));
  CHECK(is_address("node-1.example.com"));
  CHECK_FALSE(is_address("10.0.0.256"));  // digits and dots: a broken IPv4 address
  CHECK_FALSE(is_address("-node"));
  CHECK_FALSE(is_address("node_1"));
  CHECK_FALSE(is_address("a..b"));
  CHECK_FALSE(is_address(""));
  CHECK_FALSE(is_address("host:7800"));
}

TEST_CASE("address: local means loopback or localhost", "[manifest_address]") {
  CHECK(is_local_address("127.0.0.1"));
  CHECK(is_local_address("127.1.2.3"));
  CHECK(is_local_address("LocalHost"));
  CHECK(is_local_address("::1"));
  CHECK_FALSE(is_local_address("10.0.0.1"));
  CHECK_FALSE(is_local_address("0.0.0.0"));
  CHECK(is_wildcard("0.0.0.0"));
  CHECK(is_wildcard("::"));
  CHECK_FALSE(is_wildcard("127.0.0.1"));
}

TEST_CASE("address: localhost and 127.0.0.1 compare equal", "[manifest_address]") {
  CHECK(normal_host("localhost") == normal_host("127.0.0.1"));
  CHECK(normal_host("Node-A") == "node-a");
  CHECK(normal_host("127.0.0.2") != normal_host("localhost"));
}

TEST_CASE("address: a port in use cannot be bound, a free one can", "[manifest_address]") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  REQUIRE(::listen(fd, 1) == 0);
  socklen_t len = sizeof(a);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  uint16_t port = ntohs(a.sin_port);
  CHECK_FALSE(try_bind("127.0.0.1", port).empty());
  CHECK_FALSE(try_bind("localhost", port).empty());
  ::close(fd);
  CHECK(try_bind("127.0.0.1", port).empty());
  CHECK(try_bind("example.com", port) == "not a local IP address");
}
