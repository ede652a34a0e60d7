#include <catch2/catch.hpp>

#include <chrono>
#include <string>

#include "frontend/response_store.hpp"

using namespace tokenmill;
using namespace std::chrono_literals;

namespace {

using clock_t_ = response_store::clock;
const clock_t_::time_point t0{};

response_store::entry entry_of(std::string body, std::string said = "hi") {
  response_store::entry e;
  e.body = std::move(body);
  e.conversation = {{"user", std::move(said)}, {"assistant", "hello"}};
  return e;
}

response_store::limits limits_of(size_t entries, size_t bytes, std::chrono::seconds ttl = 3600s) {
  response_store::limits l;
  l.max_entries = entries;
  l.max_bytes = bytes;
  l.ttl = ttl;
  return l;
}

}  // namespace

TEST_CASE("response store: put, get, erase", "[response_store]") {
  response_store s;
  CHECK(s.bounds().max_entries == 1024);
  CHECK(s.bounds().ttl == 3600s);
  REQUIRE(s.put("resp_a", entry_of("{\"a\":1}"), t0));
  auto e = s.get("resp_a", t0 + 1s);
  REQUIRE(e);
  CHECK(e->body == "{\"a\":1}");
  REQUIRE(e->conversation.size() == 2);
  CHECK(e->conversation[1].content == "hello");
  CHECK(s.size() == 1);
  CHECK(s.bytes() == response_store::entry_bytes("resp_a", *e));
  CHECK_FALSE(s.get("resp_b", t0));
  CHECK(s.erase("resp_a", t0));
  CHECK_FALSE(s.erase("resp_a", t0));
  CHECK_FALSE(s.get("resp_a", t0));
  CHECK(s.size() == 0);
  CHECK(s.bytes() == 0);
}

TEST_CASE("response store: an entry counts its body and every message", "[response_store]") {
  auto small = entry_of("x", "hi");
  auto big = entry_of("x", std::string(1000, 'q'));
  CHECK(response_store::entry_bytes("id", big) - response_store::entry_bytes("id", small) == 998);
  CHECK(response_store::entry_bytes("id", small) > small.body.size() + 2 + 5 + 4 + 9);
}

TEST_CASE("response store: entries past the TTL are gone even if just used", "[response_store]") {
  response_store s(limits_of(10, 1 << 20, 60s));
  REQUIRE(s.put("old", entry_of("1"), t0));
  REQUIRE(s.put("new", entry_of("2"), t0 + 30s));
  CHECK(s.get("old", t0 + 59s));  // a hit does not extend the age
  CHECK_FALSE(s.get("old", t0 + 60s));
  CHECK(s.get("new", t0 + 60s));
  CHECK(s.size() == 1);
  CHECK_FALSE(s.erase("new", t0 + 90s));  // expired: nothing to delete
  CHECK(s.size() == 0);
  CHECK(s.bytes() == 0);
}

TEST_CASE("response store: over max_entries the least recently used goes", "[response_store]") {
  response_store s(limits_of(2, 1 << 20));
  REQUIRE(s.put("a", entry_of("a"), t0));
  REQUIRE(s.put("b", entry_of("b"), t0 + 1s));
  CHECK(s.get("a", t0 + 2s));  // a is now more recent than b
  REQUIRE(s.put("c", entry_of("c"), t0 + 3s));
  CHECK(s.size() == 2);
  CHECK(s.get("a", t0 + 4s));
  CHECK_FALSE(s.get("b", t0 + 4s));
  CHECK(s.get("c", t0 + 4s));
}

TEST_CASE("response store: over max_bytes the least recently used go", "[response_store]") {
  const size_t one = response_store::entry_bytes("a", entry_of(std::string(100, 'x')));
  response_store s(limits_of(100, 2 * one + one / 2));
  REQUIRE(s.put("a", entry_of(std::string(100, 'x')), t0));
  REQUIRE(s.put("b", entry_of(std::string(100, 'y')), t0));
  CHECK(s.size() == 2);
  REQUIRE(s.put("c", entry_of(std::string(100, 'z')), t0));
  CHECK(s.size() == 2);
  CHECK(s.bytes() <= s.bounds().max_bytes);
  CHECK_FALSE(s.get("a", t0));
  CHECK(s.get("b", t0));
  CHECK(s.get("c", t0));
  // One entry larger than the whole store is refused and evicts nothing.
  CHECK_FALSE(s.put("huge", entry_of(std::string(4 * one, 'h')), t0));
  CHECK(s.size() == 2);
  CHECK_FALSE(s.get("huge", t0));
}

TEST_CASE("response store: putting an id again replaces it", "[response_store]") {
  response_store s(limits_of(10, 1 << 20));
  REQUIRE(s.put("a", entry_of("first"), t0));
  REQUIRE(s.put("a", entry_of("second, longer"), t0 + 1s));
  CHECK(s.size() == 1);
  auto e = s.get("a", t0 + 2s);
  REQUIRE(e);
  CHECK(e->body == "second, longer");
  CHECK(s.bytes() == response_store::entry_bytes("a", *e));
}

TEST_CASE("response store: an entry handed out survives its eviction", "[response_store]") {
  response_store s(limits_of(1, 1 << 20));
  REQUIRE(s.put("a", entry_of("kept"), t0));
  auto held = s.get("a", t0);
  REQUIRE(s.put("b", entry_of("b"), t0));
  CHECK_FALSE(s.get("a", t0));
  REQUIRE(held);
  CHECK(held->body == "kept");
}
