#include <catch2/catch.hpp>

#include <vector>

#include "actors/router/token_order.hpp"

using namespace tokenmill;

namespace {
std::vector<token_id> tokens_of(const std::vector<released_token>& r) {
  std::vector<token_id> out;
  for (const auto& t : r)
    out.push_back(t.token);
  return out;
}
}  // namespace

TEST_CASE("token order: in-order tokens are released at once", "[token_order]") {
  token_order o;
  CHECK(o.accept(0, 10));
  auto r = o.take_ready();
  REQUIRE(r.size() == 1);
  CHECK(r[0].index == 0);
  CHECK(r[0].token == 10);
  CHECK(o.accept(1, 11));
  CHECK(tokens_of(o.take_ready()) == std::vector<token_id>{11});
  CHECK(o.next_index() == 2);
  CHECK(o.delivered() == std::vector<token_id>{10, 11});
  CHECK(o.take_ready().empty());
}

TEST_CASE("token order: a token ahead of its turn waits for the gap", "[token_order]") {
  token_order o;
  CHECK(o.accept(2, 12));
  CHECK(o.accept(1, 11));
  CHECK(o.take_ready().empty());  // index 0 is missing
  CHECK(o.next_index() == 0);
  CHECK(o.accept(0, 10));
  auto r = o.take_ready();
  CHECK(tokens_of(r) == std::vector<token_id>{10, 11, 12});
  REQUIRE(r.size() == 3);
  CHECK(r[2].index == 2);
  CHECK(o.next_index() == 3);
}

TEST_CASE("token order: a token delivered twice is dropped", "[token_order]") {
  token_order o;
  CHECK(o.accept(0, 10));
  o.take_ready();
  CHECK_FALSE(o.accept(0, 99));  // already released
  CHECK(o.take_ready().empty());
  // Twice while still waiting: the first value stays, the later step replaces the first.
  CHECK(o.accept(2, 12, pending_step{1, 2, 3, 4}));
  CHECK(o.accept(2, 77, pending_step{5, 6, 7, 8}));
  CHECK(o.accept(1, 11));
  auto r = o.take_ready();
  REQUIRE(r.size() == 2);
  CHECK(r[1].token == 12);
  CHECK(r[1].step.start_ns == 5);
  CHECK(r[1].step.end_ns == 6);
  CHECK(r[1].step.batch == 7);
  CHECK(r[1].step.prefill_tokens == 8);
  CHECK(o.delivered() == std::vector<token_id>{10, 11, 12});
}

TEST_CASE("token order: steps travel with their tokens, none with the first token",
          "[token_order]") {
  token_order o;
  CHECK(o.accept(0, 10));
  CHECK(o.accept(1, 11, pending_step{100, 200, 4, 16}));
  auto r = o.take_ready();
  REQUIRE(r.size() == 2);
  CHECK(r[0].step.start_ns == 0);
  CHECK(r[0].step.batch == 0);
  CHECK(r[1].step.start_ns == 100);
  CHECK(r[1].step.end_ns == 200);
  CHECK(r[1].step.batch == 4);
  CHECK(r[1].step.prefill_tokens == 16);
}

TEST_CASE("token order: a new attempt continues at its offset", "[token_order]") {
  token_order o;
  for (uint32_t i = 0; i < 3; ++i)
    CHECK(o.accept(i, static_cast<token_id>(10 + i)));
  o.take_ready();
  CHECK(o.accept(4, 14));  // waits behind index 3, which the attempt never sends
  // The request moves: the new attempt's index 0 is client index 3.
  o.restart(3);
  CHECK(o.offset() == 3);
  CHECK(o.next_index() == 3);
  CHECK(o.take_ready().empty());  // the old attempt's waiting token went
  // Index 1 of the new attempt is client index 4: it waits for client index 3.
  CHECK(o.accept(1, 24));
  CHECK(o.take_ready().empty());
  CHECK(o.accept(0, 23));
  auto r = o.take_ready();
  CHECK(tokens_of(r) == std::vector<token_id>{23, 24});
  REQUIRE(r.size() == 2);
  CHECK(r[0].index == 3);
  CHECK(o.delivered() == std::vector<token_id>{10, 11, 12, 23, 24});
}

TEST_CASE("token order: logprobs travel with their token, out of order too", "[token_order]") {
  token_order o;
  CHECK(o.accept(1, 11, std::nullopt, token_logprobs{-1.0f, {{11, -1.0f}}}));
  CHECK(o.accept(0, 10, std::nullopt, token_logprobs{-0.5f, {}}));
  // A second delivery keeps the first value.
  CHECK(o.accept(1, 11, std::nullopt, token_logprobs{-9.0f, {}}));
  auto r = o.take_ready();
  REQUIRE(r.size() == 2);
  CHECK(r[0].logprobs.logprob == -0.5f);
  CHECK(r[1].logprobs.logprob == -1.0f);
  REQUIRE(r[1].logprobs.top.size() == 1);
  CHECK(r[1].logprobs.top[0].token == 11);
}
