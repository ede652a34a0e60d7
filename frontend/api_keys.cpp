#include "frontend/api_keys.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <openssl/evp.h>

namespace tokenmill {

api_key_digest digest_api_key(std::string_view key) {
  api_key_digest d{};
  unsigned int len = 0;
  // EVP_Digest with SHA-256 fails only when OpenSSL cannot allocate a context; the digest
  // is then all zeros, and digest_api_key never yields it for a stored key (see from_*).
  if (EVP_Digest(key.data(), key.size(), d.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != d.size())
    d.fill(0);
  return d;
}

bool digests_equal(const api_key_digest& a, const api_key_digest& b) {
  // No early exit and no data-dependent branch: every byte is looked at.
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    diff = diff | static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

result<void> check_api_key_text(std::string_view key, std::string_view where) {
  if (key.empty())
    return error_info{errc::invalid_request, fmt::format("{}: the key is empty", where)};
  if (key.size() > 4096)
    return error_info{
        errc::invalid_request,
        fmt::format("{}: the key is {} bytes long (at most 4096)", where, key.size())};
  for (size_t i = 0; i < key.size(); ++i) {
    auto c = static_cast<unsigned char>(key[i]);
    if (c <= 0x20 || c >= 0x7f)
      return error_info{
          errc::invalid_request,
          fmt::format("{}: byte {} of the key is {} (a key is printable ASCII without spaces)",
                      where, i + 1,
                      c == ' ' ? std::string("a space") : fmt::format("0x{:02x}", c))};
  }
  return {};
}

result<std::vector<std::string>> parse_api_key_file(std::string_view text, std::string_view path) {
  std::vector<std::string> keys;
  size_t line_no = 1;
  for (size_t pos = 0; pos < text.size(); ++line_no) {
    auto nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
      line.remove_suffix(1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t'))
      line.remove_prefix(1);
    if (line.empty() || line.front() == '#') continue;
    if (auto ok = check_api_key_text(line, fmt::format("{}:{}", path, line_no)); !ok)
      return ok.error();
    keys.emplace_back(line);
  }
  if (keys.empty())
    return error_info{errc::invalid_request,
                      fmt::format("{}: no API key in the file (one key per line; '#' starts a "
                                  "comment line)",
                                  path)};
  return keys;
}

result<std::vector<std::string>> read_api_key_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return error_info{errc::invalid_request, fmt::format("{}: cannot read the API key file: {}",
                                                         path, std::strerror(errno))};
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad())
    return error_info{errc::invalid_request,
                      fmt::format("{}: error while reading the API key file", path)};
  return parse_api_key_file(buf.str(), path);
}

namespace {

std::vector<api_key_digest> digests_of(const std::vector<std::string>& keys) {
  std::vector<api_key_digest> out;
  out.reserve(keys.size());
  for (const auto& k : keys)
    out.push_back(digest_api_key(k));
  return out;
}

}  // namespace

api_keys::api_keys(std::string path, digest_set keys)
    : path_(std::move(path)), keys_(std::make_shared<const digest_set>(std::move(keys))) {}

result<std::shared_ptr<api_keys>> api_keys::from_key(std::string_view key, std::string_view where) {
  if (auto ok = check_api_key_text(key, where); !ok) return ok.error();
  return std::shared_ptr<api_keys>(new api_keys("", {digest_api_key(key)}));
}

result<std::shared_ptr<api_keys>> api_keys::from_file(std::string path) {
  auto keys = read_api_key_file(path);
  if (!keys) return keys.error();
  return std::shared_ptr<api_keys>(new api_keys(std::move(path), digests_of(*keys)));
}

std::shared_ptr<const api_keys::digest_set> api_keys::current() const {
  std::lock_guard<std::mutex> lock(mtx_);
  return keys_;
}

bool api_keys::accepts_digest(const api_key_digest& d) const {
  static const api_key_digest zero{};
  auto keys = current();
  bool found = false;
  for (const auto& k : *keys)
    found = digests_equal(k, d) | found;  // `|`, not `||`: every key is compared
  return found && !digests_equal(d, zero);
}

bool api_keys::accepts(std::string_view key) const {
  return accepts_digest(digest_api_key(key));
}

size_t api_keys::size() const {
  return current()->size();
}

result<size_t> api_keys::reload() {
  if (path_.empty()) return size();
  auto keys = read_api_key_file(path_);
  if (!keys) return keys.error();
  auto fresh = std::make_shared<const digest_set>(digests_of(*keys));
  std::lock_guard<std::mutex> lock(mtx_);
  keys_ = std::move(fresh);
  return keys_->size();
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
  constexpr std::string_view scheme = "bearer";
  if (authorization.size() <= scheme.size()) return std::nullopt;
  for (size_t i = 0; i < scheme.size(); ++i) {
    char c = authorization[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != scheme[i]) return std::nullopt;
  }
  auto rest = authorization.substr(scheme.size());
  if (rest.front() != ' ') return std::nullopt;
  while (!rest.empty() && rest.front() == ' ')
    rest.remove_prefix(1);
  while (!rest.empty() && (rest.back() == ' ' || rest.back() == '\t'))
    rest.remove_suffix(1);
  if (rest.empty()) return std::nullopt;
  return rest;
}

}  // namespace tokenmill
