// Proof of the cluster secret at join as plain functions: the HMAC, one answer per
// challenge, the replay window, and what a secret file must hold.
#include <catch2/catch.hpp>

#include <array>
#include <string>
#include <vector>

#include "actors/supervisor/join_policy.hpp"

using namespace tokenmill;

namespace {

std::vector<uint8_t> bytes(const std::string& s) {
  return {s.begin(), s.end()};
}

std::array<uint8_t, join_nonce_bytes> nonce(uint8_t fill) {
  std::array<uint8_t, join_nonce_bytes> n{};
  n.fill(fill);
  return n;
}

join_statement statement() {
  join_statement s;
  s.cluster = "demo";
  s.name = "d0";
  s.index = 2;
  s.manifest_hash = 0x1234;
  s.model = "sim";
  s.host_id = "boot-1";
  return s;
}

constexpr int64_t ms = 1'000'000;

}  // namespace

TEST_CASE("join policy: the proof is HMAC-SHA256 over the challenge and every claim",
          "[join_policy]") {
  auto key = bytes("a cluster secret of some length");
  auto s = statement();
  auto p = join_proof(key, "00ff", s);
  CHECK(p.size() == 2 * join_proof_bytes);
  CHECK(p == join_proof(key, "00ff", s));  // deterministic
  CHECK(p != join_proof(bytes("another cluster secret, longer"), "00ff", s));
  CHECK(p != join_proof(key, "00fe", s));
  // Every field of the statement is covered.
  for (int f = 0; f < 6; ++f) {
    auto t = s;
    switch (f) {
      case 0:
        t.cluster += "x";
        break;
      case 1:
        t.name = "d1";
        break;
      case 2:
        t.index = 3;
        break;
      case 3:
        t.manifest_hash ^= 1;
        break;
      case 4:
        t.model = "other";
        break;
      case 5:
        t.host_id = "boot-2";
        break;
    }
    INFO("field " << f);
    CHECK(join_proof(key, "00ff", t) != p);
  }
  // Length-prefixed fields: moving a character between fields changes the proof.
  auto a = s, b = s;
  a.cluster = "ab";
  a.name = "c";
  b.cluster = "a";
  b.name = "bc";
  CHECK(join_proof(key, "00", a) != join_proof(key, "00", b));
  CHECK(to_hex(std::vector<uint8_t>{0x00, 0x0f, 0xa0, 0xff}) == "000fa0ff");
}

TEST_CASE("join policy: a right answer is accepted once", "[join_policy]") {
  auto key = bytes("0123456789abcdef0123");
  join_challenges book;
  auto c = book.issue(nonce(7), 0);
  CHECK(c.size() == 2 * join_nonce_bytes);
  CHECK(book.outstanding() == 1);
  auto s = statement();
  auto proof = join_proof(key, c, s);
  CHECK(book.verify(key, c, proof, s, 5 * ms).empty());
  CHECK(book.outstanding() == 0);
  // The same join again, word for word: a replay.
  CHECK_THAT(book.verify(key, c, proof, s, 6 * ms), Catch::Contains("replayed join"));
}

TEST_CASE("join policy: refusals say why", "[join_policy]") {
  auto key = bytes("0123456789abcdef0123");
  join_challenges::limits lim;
  lim.window_ns = 1000 * ms;
  join_challenges book(lim);
  auto s = statement();

  SECTION("a wrong secret, and the challenge is used up by it") {
    auto c = book.issue(nonce(1), 0);
    auto wrong = join_proof(bytes("not the cluster secret at all"), c, s);
    CHECK_THAT(book.verify(key, c, wrong, s, ms), Catch::Contains("wrong proof"));
    // A second guess against the same challenge gets nowhere, even with the right secret.
    CHECK_THAT(book.verify(key, c, join_proof(key, c, s), s, ms), Catch::Contains("replayed join"));
  }
  SECTION("a proof for another claim") {
    auto c = book.issue(nonce(2), 0);
    auto other = s;
    other.name = "intruder";
    CHECK_THAT(book.verify(key, c, join_proof(key, c, s), other, ms),
               Catch::Contains("wrong proof"));
  }
  SECTION("a challenge this supervisor never issued") {
    auto c = to_hex(nonce(3));
    CHECK_THAT(book.verify(key, c, join_proof(key, c, s), s, ms),
               Catch::Contains("unknown challenge"));
  }
  SECTION("an answer after the window") {
    auto c = book.issue(nonce(4), 0);
    CHECK_THAT(book.verify(key, c, join_proof(key, c, s), s, 1001 * ms),
               Catch::Contains("expired"));
  }
  SECTION("no proof at all") {
    auto c = book.issue(nonce(5), 0);
    CHECK_THAT(book.verify(key, "", "", s, ms), Catch::Contains("no proof"));
    CHECK_THAT(book.verify(key, c, "", s, ms), Catch::Contains("no proof"));
    CHECK(book.outstanding() == 1);  // nothing was answered
  }
  SECTION("a truncated proof") {
    auto c = book.issue(nonce(6), 0);
    auto p = join_proof(key, c, s);
    CHECK_THAT(book.verify(key, c, p.substr(0, 10), s, ms), Catch::Contains("wrong proof"));
  }
}

TEST_CASE("join policy: pending challenges are bounded and expire", "[join_policy]") {
  auto key = bytes("0123456789abcdef0123");
  join_challenges::limits lim;
  lim.window_ns = 1000 * ms;
  lim.max_outstanding = 3;
  join_challenges book(lim);
  auto s = statement();
  auto first = book.issue(nonce(1), 0);
  book.issue(nonce(2), 0);
  book.issue(nonce(3), 0);
  auto fourth = book.issue(nonce(4), 0);
  CHECK(book.outstanding() == 3);  // the oldest was forgotten
  CHECK_THAT(book.verify(key, first, join_proof(key, first, s), s, ms),
             Catch::Contains("unknown challenge"));
  CHECK(book.verify(key, fourth, join_proof(key, fourth, s), s, ms).empty());
  // Expired challenges are dropped when the next one is issued.
  book.issue(nonce(5), 5000 * ms);
  CHECK(book.outstanding() == 1);
}

TEST_CASE("join policy: a secret file holds at least 16 bytes", "[join_policy]") {
  CHECK(secret_problem("0123456789abcdef\n") == std::nullopt);
  CHECK(secret_bytes("  0123456789abcdef\n") == bytes("0123456789abcdef"));
  auto short_one = secret_problem("  short  \n");
  REQUIRE(short_one);
  CHECK_THAT(*short_one, Catch::Contains("5 bytes") && Catch::Contains("at least 16"));
  CHECK(secret_problem(""));
}
