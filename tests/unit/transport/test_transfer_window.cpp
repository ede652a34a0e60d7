#include <catch2/catch.hpp>

#include <chrono>
#include <vector>

#include "transport/transfer_window.hpp"

using namespace tokenmill;
using namespace std::chrono_literals;

TEST_CASE("coalesce_blocks makes one segment per run consecutive on both sides",
          "[transfer_window]") {
  const size_t bb = 100;
  const uint64_t base = 1'000'000;
  SECTION("one run") {
    std::vector<block_id> src{3, 4, 5}, dst{7, 8, 9};
    auto segs = coalesce_blocks(src, dst, bb, base);
    REQUIRE(segs.size() == 1);
    CHECK(segs[0] == transfer_segment{300, 300, base + 700});
  }
  SECTION("a break on either side starts a new segment") {
    std::vector<block_id> src{0, 1, 2, 3, 9}, dst{0, 1, 5, 6, 7};
    auto segs = coalesce_blocks(src, dst, bb, base);
    CHECK(segs == std::vector<transfer_segment>{
                      {0, 200, base}, {200, 200, base + 500}, {900, 100, base + 700}});
  }
  SECTION("descending ids are single blocks") {
    std::vector<block_id> src{2, 1}, dst{2, 1};
    CHECK(coalesce_blocks(src, dst, bb, base).size() == 2);
  }
  SECTION("nothing to write, no segments") {
    CHECK(coalesce_blocks({}, {}, bb, base).empty());
  }
}

TEST_CASE("staging_pieces cuts segments at whole blocks up to the piece size",
          "[transfer_window]") {
  const size_t bb = 10;
  SECTION("segments smaller than a piece share it") {
    std::vector<transfer_segment> segs{{0, 20, 1000}, {50, 10, 2000}};
    auto pieces = staging_pieces(segs, bb, 40);
    REQUIRE(pieces.size() == 1);
    CHECK(pieces[0] == segs);
  }
  SECTION("a long segment is split; every piece but the last is full") {
    std::vector<transfer_segment> segs{{0, 50, 1000}, {100, 30, 5000}};
    auto pieces = staging_pieces(segs, bb, 40);
    REQUIRE(pieces.size() == 2);
    CHECK(pieces[0] == std::vector<transfer_segment>{{0, 40, 1000}});
    CHECK(pieces[1] == std::vector<transfer_segment>{{40, 10, 1040}, {100, 30, 5000}});
    size_t total = 0;
    for (const auto& p : pieces)
      for (const auto& s : p) {
        total += s.bytes;
        CHECK(s.bytes % bb == 0);
      }
    CHECK(total == 80);
  }
  SECTION("the last piece may be short") {
    std::vector<transfer_segment> segs{{0, 50, 1000}};
    auto pieces = staging_pieces(segs, bb, 40);
    REQUIRE(pieces.size() == 2);
    CHECK(pieces[1] == std::vector<transfer_segment>{{40, 10, 1040}});
  }
  SECTION("a piece smaller than a block still holds one block") {
    std::vector<transfer_segment> segs{{0, 30, 0}};
    auto pieces = staging_pieces(segs, bb, 4);
    REQUIRE(pieces.size() == 3);
    for (size_t i = 0; i < 3; ++i)
      CHECK(pieces[i] == std::vector<transfer_segment>{{10 * i, 10, 10 * i}});
  }
  SECTION("a piece size that is not a block multiple rounds down") {
    std::vector<transfer_segment> segs{{0, 60, 0}};
    auto pieces = staging_pieces(segs, bb, 25);  // 2 blocks per piece
    REQUIRE(pieces.size() == 3);
    CHECK(pieces[2] == std::vector<transfer_segment>{{40, 20, 40}});
  }
  SECTION("no segments, no pieces") {
    CHECK(staging_pieces({}, bb, 40).empty());
  }
}

TEST_CASE("window_admits keeps bytes in flight within the window", "[transfer_window]") {
  CHECK(window_admits(0, 10, 100));
  CHECK(window_admits(90, 10, 100));  // exactly full
  CHECK_FALSE(window_admits(91, 10, 100));
  CHECK(window_admits(0, 1000, 100));  // larger than the window: starts alone
  CHECK_FALSE(window_admits(1, 1000, 100));
  CHECK(window_admits(0, 0, 0));
}

TEST_CASE("check_transfer times out at the deadline and reports stalls", "[transfer_window]") {
  const auto t0 = transfer_clock::time_point{} + 1h;
  const auto deadline = t0 + 5000ms;
  SECTION("running: the next look is the sooner of the stall check and the deadline") {
    auto c = check_transfer(t0 + 100ms, deadline, t0, 1000ms, true);
    CHECK(c.state == transfer_state::running);
    CHECK(c.next == t0 + 1000ms);
    auto late = check_transfer(t0 + 4500ms, deadline, t0 + 4400ms, 1000ms, true);
    CHECK(late.state == transfer_state::running);
    CHECK(late.next == deadline);
  }
  SECTION("no progress for the stall timeout is a stall, until the deadline") {
    auto c = check_transfer(t0 + 1000ms, deadline, t0, 1000ms, true);
    CHECK(c.state == transfer_state::stalled);
    CHECK(c.next == deadline);
    CHECK(check_transfer(t0 + 4999ms, deadline, t0, 1000ms, true).state == transfer_state::stalled);
  }
  SECTION("a write not watched for stalls only has its deadline") {
    auto c = check_transfer(t0 + 3000ms, deadline, t0, 1000ms, false);
    CHECK(c.state == transfer_state::running);
    CHECK(c.next == deadline);
  }
  SECTION("at or past the deadline it has timed out, stalled or not") {
    CHECK(check_transfer(deadline, deadline, t0, 1000ms, true).state == transfer_state::timed_out);
    CHECK(check_transfer(deadline + 1ms, deadline, deadline, 1000ms, false).state ==
          transfer_state::timed_out);
  }
}

TEST_CASE("wait_timeout_ms rounds up and stays within [0, max_wait]", "[transfer_window]") {
  const auto now = transfer_clock::time_point{} + 1h;
  CHECK(wait_timeout_ms(now, now + 250ms, 1000ms) == 250);
  CHECK(wait_timeout_ms(now, now + std::chrono::microseconds(1), 1000ms) == 1);
  CHECK(wait_timeout_ms(now, now - 5ms, 1000ms) == 0);
  CHECK(wait_timeout_ms(now, now + 5s, 1000ms) == 1000);
  CHECK(wait_timeout_ms(now, transfer_clock::time_point::max(), 1000ms) == 1000);
}
