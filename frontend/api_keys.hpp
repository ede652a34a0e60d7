#pragma once
/// The API keys a frontend accepts (RPC and HTTP alike): parsing a key file, comparing a
/// presented key in constant time, and reloading the file (on SIGHUP). No CAF, no Asio, no
/// kj: the servers ask `accepts()` and the composition root calls `reload()`.
///
/// Keys are kept only as SHA-256 digests. A presented key is hashed and its digest compared
/// with every stored digest without an early exit, so the time taken depends neither on
/// how much of a key matched, nor on which key matched, nor on the keys' lengths.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace tokenmill {

/// SHA-256 of a key.
using api_key_digest = std::array<uint8_t, 32>;

/// The digest of `key`.
api_key_digest digest_api_key(std::string_view key);

/// True when `a` and `b` are equal; runs in the same time whatever they hold.
bool digests_equal(const api_key_digest& a, const api_key_digest& b);

/// Checks one key as given on a command line or in a file: 1..4096 bytes of printable ASCII
/// without spaces (it has to fit an HTTP `Authorization` header unchanged). The error
/// names `where` (e.g. "--api-key" or "keys.txt:3").
result<void> check_api_key_text(std::string_view key, std::string_view where);

/// The keys of a key file's `text`: one key per line; surrounding spaces and tabs are
/// dropped; blank lines and lines whose first other character is '#' are comments. An
/// error names `path`, the line and what is wrong; a file without any key is an error
/// (an empty file must not silently lock every client out, nor open the server).
result<std::vector<std::string>> parse_api_key_file(std::string_view text, std::string_view path);

/// The keys of the file at `path` (read, then parse_api_key_file).
result<std::vector<std::string>> read_api_key_file(const std::string& path);

/// A set of accepted keys, shared by the RPC and HTTP servers and replaced as a whole on
/// reload. Thread-safe.
class api_keys {
 public:
  /// One fixed key (`serve --api-key KEY`, $TOKENMILL_API_KEY); reload() keeps it.
  static result<std::shared_ptr<api_keys>> from_key(std::string_view key,
                                                    std::string_view where = "--api-key");
  /// The keys of a key file; reload() reads the file again.
  static result<std::shared_ptr<api_keys>> from_file(std::string path);

  /// True when `key` is one of the keys (constant time, see above).
  bool accepts(std::string_view key) const;
  /// True when a key with digest `d` is still one of the keys (an RPC session logged in
  /// with a key that a reload removed loses access at its next call).
  bool accepts_digest(const api_key_digest& d) const;
  /// The number of keys now.
  size_t size() const;
  /// The key file, or empty for a fixed key.
  const std::string& path() const { return path_; }

  /// Reads the key file again and, when it is valid, replaces every key with its keys;
  /// returns how many there are now. On an error the old keys stay and the error says why
  /// (naming the file and line). A fixed key is kept as it is.
  result<size_t> reload();

 private:
  using digest_set = std::vector<api_key_digest>;
  api_keys(std::string path, digest_set keys);
  std::shared_ptr<const digest_set> current() const;

  std::string path_;
  mutable std::mutex mtx_;
  std::shared_ptr<const digest_set> keys_;
};

/// The key of an `Authorization` header value "Bearer KEY" (the scheme is case-insensitive,
/// RFC 7235; one or more spaces after it); nullopt for anything else.
std::optional<std::string_view> bearer_token(std::string_view authorization);

}  // namespace tokenmill
