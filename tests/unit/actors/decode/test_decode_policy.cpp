#include <catch2/catch.hpp>

#include <vector>

#include "actors/decode/decode_policy.hpp"

using namespace tokenmill;

namespace {
constexpr token_id kEos = 2;
}

TEST_CASE("stop reason: eos, then stop ids, then max_tokens", "[decode_policy]") {
  request_options o;
  o.max_tokens = 4;
  o.stop_ids = {7, 9};
  CHECK(stop_reason(o, 1, 5, kEos) == finish_reason::none);
  CHECK(stop_reason(o, 1, kEos, kEos) == finish_reason::eos);
  CHECK(stop_reason(o, 2, 9, kEos) == finish_reason::stop);
  CHECK(stop_reason(o, 4, 5, kEos) == finish_reason::length);
  CHECK(stop_reason(o, 5, 5, kEos) == finish_reason::length);
  // EOS wins over a stop id and over the length limit; a stop id over the length limit.
  o.stop_ids.push_back(kEos);
  CHECK(stop_reason(o, 4, kEos, kEos) == finish_reason::eos);
  CHECK(stop_reason(o, 4, 7, kEos) == finish_reason::stop);
}

TEST_CASE("stop reason: ignore_eos generates past EOS, stop ids still apply", "[decode_policy]") {
  request_options o;
  o.max_tokens = 10;
  o.ignore_eos = true;
  CHECK(stop_reason(o, 1, kEos, kEos) == finish_reason::none);
  o.stop_ids = {kEos};
  CHECK(stop_reason(o, 1, kEos, kEos) == finish_reason::stop);
  CHECK(stop_reason(o, 10, kEos, kEos) == finish_reason::stop);
}

TEST_CASE("capacity: an assignment larger than the whole pool fails at once", "[decode_policy]") {
  CHECK_FALSE(check_capacity(10, 100, 60, 10));
  CHECK_FALSE(check_capacity(0, 0, 0, 0));
  auto err = check_capacity(11, 100, 70, 10);
  REQUIRE(err);
  CHECK(err->code == errc::out_of_blocks);
  CHECK(err->message ==
        "request needs 11 KV blocks (prompt 100 + max_tokens 70 tokens); the decode pool has 10");
}

TEST_CASE("kv_transfer: only blocks reserved for the transfer, one checksum each",
          "[decode_policy]") {
  const std::vector<block_id> reserved{5, 6, 7};
  CHECK_FALSE(check_kv_transfer(reserved, std::vector<block_id>{6, 7}, 2));
  CHECK_FALSE(check_kv_transfer(reserved, std::vector<block_id>{}, 0));
  CHECK_FALSE(check_kv_transfer(reserved, std::vector<block_id>{7, 5, 6}, 3));

  // A cached block (outside the transfer's range) or a stranger is never written.
  auto err = check_kv_transfer(reserved, std::vector<block_id>{6, 4}, 2);
  REQUIRE(err);
  CHECK(err->code == errc::kv_corrupt);
  CHECK(err->message == "KV transfer names block 4, which is not reserved for the prompt");

  err = check_kv_transfer(reserved, std::vector<block_id>{5, 6}, 1);
  REQUIRE(err);
  CHECK(err->code == errc::kv_corrupt);
  CHECK(err->message == "KV transfer carries 1 checksums for 2 blocks");

  // The block check comes first.
  err = check_kv_transfer(reserved, std::vector<block_id>{9}, 0);
  REQUIRE(err);
  CHECK(err->message == "KV transfer names block 9, which is not reserved for the prompt");
  CHECK(check_kv_transfer({}, std::vector<block_id>{1}, 1));
}

TEST_CASE("block checksum: a mismatch names the block and both sums", "[decode_policy]") {
  CHECK_FALSE(check_block_checksum(3, 0xabc, 0xabc));
  auto err = check_block_checksum(3, 0xabc, 0xdef);
  REQUIRE(err);
  CHECK(err->code == errc::kv_corrupt);
  CHECK(err->message ==
        "KV block 3 failed its checksum after transfer (0000000000000abc != 0000000000000def)");
}

TEST_CASE("kv_ready: reported and received must both be the expected count", "[decode_policy]") {
  CHECK_FALSE(check_kv_ready(3, 3, 3));
  CHECK_FALSE(check_kv_ready(0, 0, 0));
  for (auto [received, reported] : {std::pair<size_t, uint32_t>{2, 3}, {3, 2}, {4, 3}, {3, 4}}) {
    auto err = check_kv_ready(received, reported, 3);
    REQUIRE(err);
    CHECK(err->code == errc::kv_corrupt);
  }
  CHECK(check_kv_ready(2, 3, 3)->message ==
        "prefill reported 3 blocks; 2 of 3 prompt blocks arrived");
}

TEST_CASE("blocks are held only while a one-sided write may still land", "[decode_policy]") {
  CHECK(hold_until_drained(true, true));
  CHECK_FALSE(hold_until_drained(true, false));  // two-sided: nothing lands without us
  CHECK_FALSE(hold_until_drained(false, true));  // KV complete (or never asked for)
  CHECK_FALSE(hold_until_drained(false, false));
}

TEST_CASE("on_drain: what a draining decode worker does with each sequence", "[decode_policy]") {
  for (bool live : {false, true}) {
    // Nothing computed yet: back to the router, whatever else is available.
    CHECK(on_drain(held_sequence::unreserved, live) == drain_action::hand_back);
    // Waiting on a remote prefill could hold the drain for the whole prefill backlog.
    CHECK(on_drain(held_sequence::awaiting_kv, live) == drain_action::hand_back);
    // Its KV is being computed here (local prefill, fetch, a move in): it completes first.
    CHECK(on_drain(held_sequence::prefilling, live) == drain_action::finish_in_place);
  }
  // Decoding: moves live when it can, else finishes where it is (never recomputed).
  CHECK(on_drain(held_sequence::decoding, true) == drain_action::migrate);
  CHECK(on_drain(held_sequence::decoding, false) == drain_action::finish_in_place);
}

TEST_CASE("first-token release: names, and which sequences hold their first token",
          "[decode_policy]") {
  for (auto r : {first_token_release::prefill, first_token_release::decode}) {
    auto parsed = parse_first_token_release(first_token_release_name(r));
    REQUIRE(parsed);
    CHECK(*parsed == r);
  }
  auto bad = parse_first_token_release("router");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == errc::invalid_request);
  CHECK(bad.error().message == "first-token release: unknown value 'router' (prefill or decode)");
  // Only a remote prefill's first token is held, and only in `decode` release: a local
  // prefill's comes from the decode worker's own step already.
  CHECK(hold_first_token(first_token_release::decode, true));
  CHECK_FALSE(hold_first_token(first_token_release::decode, false));
  CHECK_FALSE(hold_first_token(first_token_release::prefill, true));
  CHECK_FALSE(hold_first_token(first_token_release::prefill, false));
}

TEST_CASE("a held first token goes out as its sequence joins a step, moves or ends normally",
          "[decode_policy]") {
  // Joining the first decode step, or moving to another worker first: always released.
  for (auto m : {held_token_moment::joins_step, held_token_moment::moves_out}) {
    CHECK(release_held_token(m, finish_reason::none, false));
  }
  // Ending before any step: the first token was the last one, the client must get it.
  for (auto r : {finish_reason::length, finish_reason::stop, finish_reason::eos})
    CHECK(release_held_token(held_token_moment::ends, r, false));
  // A cancelled or failed attempt drops it; so does one handed back to the router, which
  // routes the request again and computes the token anew (never delivered twice).
  CHECK_FALSE(release_held_token(held_token_moment::ends, finish_reason::cancelled, false));
  CHECK_FALSE(release_held_token(held_token_moment::ends, finish_reason::error, false));
  CHECK_FALSE(release_held_token(held_token_moment::ends, finish_reason::error, true));
  CHECK_FALSE(release_held_token(held_token_moment::ends, finish_reason::length, true));
}
