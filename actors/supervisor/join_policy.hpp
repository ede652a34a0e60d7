#pragma once
/// Proof of the cluster secret at join, free of CAF (STYLE.md §2). A joining node asks the
/// supervisor for a challenge (a fresh random nonce), answers with HMAC-SHA256 under the
/// secret over the challenge and everything its join claims, and the supervisor checks the
/// answer: the secret never crosses the wire, a proof is bound to one claim, and each
/// challenge is good for one answer within a short window, so a recorded join replayed
/// later is refused. The supervisor actor draws the random bytes and reads the clock; the
/// decisions are here, tested as plain functions.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace tokenmill {

/// Bytes of a challenge nonce, and of a proof (HMAC-SHA256).
constexpr size_t join_nonce_bytes = 32;
constexpr size_t join_proof_bytes = 32;

/// Everything a join proof covers besides the challenge: who joins, with what.
struct join_statement {
  std::string cluster;
  std::string name;
  uint32_t index = 0;
  uint64_t manifest_hash = 0;
  std::string model;
  std::string host_id;
};

/// HMAC-SHA256 under `secret` over the challenge and the statement (each field length-
/// prefixed, so that no two statements share an encoding). Lower-case hex, 64 characters.
std::string join_proof(std::span<const uint8_t> secret, const std::string& challenge_hex,
                       const join_statement& s);

/// Reads a cluster secret from the text of its file: surrounding white space is dropped; at
/// least 16 bytes must remain. The error says what is wrong (not the secret).
std::optional<std::string> secret_problem(const std::string& text);
/// The secret's bytes: the text without surrounding white space.
std::vector<uint8_t> secret_bytes(const std::string& text);

/// Fills `out` from the system's cryptographic random source; false when it failed.
bool fill_random(std::span<uint8_t> out);

/// Lower-case hex of `bytes`.
std::string to_hex(std::span<const uint8_t> bytes);

/// The supervisor's book of outstanding challenges.
class join_challenges {
 public:
  struct limits {
    int64_t window_ns = 10'000'000'000;  ///< a challenge not answered within this expires
    size_t max_outstanding = 256;        ///< more pending: the oldest is forgotten
    size_t max_remembered = 4096;        ///< used challenges kept to name a replay as such
  };

  join_challenges() = default;
  explicit join_challenges(limits l) : limits_(l) {}

  /// Records a new challenge made of `random` (join_nonce_bytes of fresh randomness) at
  /// `now_ns`; returns it as hex.
  std::string issue(std::span<const uint8_t> random, int64_t now_ns);

  /// Checks a join's answer. Empty: accepted (the challenge is used up). Otherwise why it
  /// was refused; a challenge is used up by any answer, right or wrong, so that a secret
  /// cannot be guessed against one challenge.
  std::string verify(std::span<const uint8_t> secret, const std::string& challenge_hex,
                     const std::string& proof_hex, const join_statement& s, int64_t now_ns);

  /// Challenges issued and not yet answered or expired.
  size_t outstanding() const { return pending_.size(); }

 private:
  struct pending {
    std::string challenge;
    int64_t issued_ns = 0;
  };
  void remember_used(std::string challenge);

  limits limits_;
  std::deque<pending> pending_;
  std::deque<std::string> used_;
};

}  // namespace tokenmill
