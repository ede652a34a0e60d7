#include "actors/supervisor/join_policy.hpp"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

namespace tokenmill {
namespace {

void put_field(std::string& out, std::string_view v) {
  out += fmt::format("{}:", v.size());
  out += v;
  out += '\n';
}

std::string_view trimmed(const std::string& text) {
  std::string_view v(text);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front())))
    v.remove_prefix(1);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back())))
    v.remove_suffix(1);
  return v;
}

}  // namespace

bool fill_random(std::span<uint8_t> out) {
  return RAND_bytes(out.data(), static_cast<int>(out.size())) == 1;
}

std::string to_hex(std::span<const uint8_t> bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (auto b : bytes)
    out += fmt::format("{:02x}", b);
  return out;
}

std::string join_proof(std::span<const uint8_t> secret, const std::string& challenge_hex,
                       const join_statement& s) {
  std::string msg = "tokenmill-join-v1\n";
  put_field(msg, challenge_hex);
  put_field(msg, s.cluster);
  put_field(msg, s.name);
  put_field(msg, std::to_string(s.index));
  put_field(msg, fmt::format("{:016x}", s.manifest_hash));
  put_field(msg, s.model);
  put_field(msg, s.host_id);
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // An empty key is valid HMAC input; OpenSSL wants a non-null pointer for it.
  static const uint8_t none = 0;
  if (!HMAC(EVP_sha256(), secret.empty() ? &none : secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len))
    return {};
  return to_hex(std::span<const uint8_t>(mac, len));
}

std::optional<std::string> secret_problem(const std::string& text) {
  auto v = trimmed(text);
  if (v.size() < 16)
    return fmt::format(
        "the secret has {} bytes (after dropping surrounding white space); "
        "expected at least 16 (tokenmill certs init writes 64 hex digits)",
        v.size());
  return std::nullopt;
}

std::vector<uint8_t> secret_bytes(const std::string& text) {
  auto v = trimmed(text);
  return {v.begin(), v.end()};
}

std::string join_challenges::issue(std::span<const uint8_t> random, int64_t now_ns) {
  while (!pending_.empty() && now_ns - pending_.front().issued_ns > limits_.window_ns)
    pending_.pop_front();
  while (pending_.size() >= limits_.max_outstanding)
    pending_.pop_front();
  auto c = to_hex(random);
  pending_.push_back({c, now_ns});
  return c;
}

void join_challenges::remember_used(std::string challenge) {
  used_.push_back(std::move(challenge));
  while (used_.size() > limits_.max_remembered)
    used_.pop_front();
}

std::string join_challenges::verify(std::span<const uint8_t> secret,
                                    const std::string& challenge_hex, const std::string& proof_hex,
                                    const join_statement& s, int64_t now_ns) {
  if (challenge_hex.empty() || proof_hex.empty())
    return "no proof of the cluster secret (the node runs without security.secret_file, or "
           "an older tokenmill)";
  auto it = std::find_if(pending_.begin(), pending_.end(),
                         [&](const pending& p) { return p.challenge == challenge_hex; });
  if (it == pending_.end()) {
    if (std::find(used_.begin(), used_.end(), challenge_hex) != used_.end())
      return "replayed join: its challenge was already answered";
    return "unknown challenge (not issued by this supervisor, or forgotten)";
  }
  auto issued = it->issued_ns;
  pending_.erase(it);
  remember_used(challenge_hex);
  if (now_ns - issued > limits_.window_ns)
    return fmt::format("the challenge expired: answered after {} ms, the window is {} ms",
                       (now_ns - issued) / 1'000'000, limits_.window_ns / 1'000'000);
  auto expected = join_proof(secret, challenge_hex, s);
  if (expected.empty()) return "cannot compute the proof (HMAC failed)";
  if (proof_hex.size() != expected.size() ||
      CRYPTO_memcmp(proof_hex.data(), expected.data(), expected.size()) != 0)
    return "wrong proof of the cluster secret (the node's secret differs)";
  return {};
}

}  // namespace tokenmill
