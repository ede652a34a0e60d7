#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "actors/supervisor/node_certificates.hpp"

using namespace tokenmill;

namespace {

/// A handshake payload: the node key (what the supervisor serializes) and what follows it.
std::vector<uint8_t> handshake(uint8_t node, const std::vector<uint8_t>& tail = {}) {
  std::vector<uint8_t> h(32 + tail.size(), node);
  std::copy(tail.begin(), tail.end(), h.begin() + 32);
  return h;
}

std::vector<uint8_t> key(uint8_t node) {
  return std::vector<uint8_t>(32, node);
}

using names = std::vector<std::string>;

}  // namespace

TEST_CASE("node certificates: a node joins only under a name its certificate carries",
          "[node_certificates]") {
  CHECK(judge_node_certificate("d0", {{"d0"}}).empty());
  CHECK(judge_node_certificate("d0", {{"cn-other", "d0"}}).empty());  // as a subjectAltName
  CHECK(judge_node_certificate("d0", {{"d0"}, {"d0"}}).empty());      // two links, both d0
  // The certificate of node b, used to join as node a.
  auto b_as_a = judge_node_certificate("a", {{"b"}});
  CHECK_THAT(b_as_a, Catch::Contains("issued for 'b'") && Catch::Contains("not for node 'a'"));
  // Names are compared exactly: no prefixes, no case folding, no wildcards.
  CHECK_FALSE(judge_node_certificate("d0", {{"d01"}}).empty());
  CHECK_FALSE(judge_node_certificate("d0", {{"D0"}}).empty());
  CHECK_FALSE(judge_node_certificate("d0", {{"*"}}).empty());
  // One link of the node presented another certificate (a second link claiming its id).
  CHECK_THAT(judge_node_certificate("a", {{"a"}, {"b"}}), Catch::Contains("issued for 'b'"));
  // A certificate without names, and no link at all (a join that bypassed the gate).
  CHECK_THAT(judge_node_certificate("a", {{}}), Catch::Contains("issued for no name"));
  CHECK_THAT(judge_node_certificate("a", {}), Catch::Contains("no TLS link"));
}

TEST_CASE("node certificates: links are found by the node id their handshake starts with",
          "[node_certificates]") {
  node_certificates t;
  CHECK(t.link_opened(handshake(1, {9, 9}), names{"a"}));
  CHECK(t.link_opened(handshake(2), names{"b"}));
  CHECK(t.names_of(key(1)) == std::vector<names>{{"a"}});
  CHECK(t.names_of(key(2)) == std::vector<names>{{"b"}});
  CHECK(t.names_of(key(3)).empty());
  CHECK(t.names_of({}).empty());  // a node id that could not be serialized finds nothing
  // A longer key than any handshake finds nothing (no reads past the end).
  CHECK(t.names_of(std::vector<uint8_t>(64, 2)).empty());
  // The same link twice counts twice; it is gone when both closed.
  CHECK(t.link_opened(handshake(2), names{"b"}));
  t.link_closed(handshake(2), names{"b"});
  CHECK(t.names_of(key(2)).size() == 1);
  t.link_closed(handshake(2), names{"b"});
  CHECK(t.names_of(key(2)).empty());
  // Closing what was never opened changes nothing.
  t.link_closed(handshake(7), names{"x"});
  CHECK(t.size() == 1);
  // A second link claiming node 1's id with another certificate shows up beside the first.
  CHECK(t.link_opened(handshake(1), names{"b"}));
  CHECK(t.names_of(key(1)).size() == 2);
  CHECK_FALSE(judge_node_certificate("a", t.names_of(key(1))).empty());
}

TEST_CASE("node certificates: the table is bounded", "[node_certificates]") {
  node_certificates t(2);
  CHECK(t.link_opened(handshake(1), names{"a"}));
  CHECK(t.link_opened(handshake(2), names{"b"}));
  CHECK_FALSE(t.link_opened(handshake(3), names{"c"}));  // full: not recorded
  CHECK(t.names_of(key(3)).empty());
  CHECK(t.link_opened(handshake(1), names{"a"}));  // a known link still counts
  t.link_closed(handshake(2), names{"b"});
  CHECK(t.link_opened(handshake(3), names{"c"}));  // room again
  CHECK(t.size() == 2);
}
