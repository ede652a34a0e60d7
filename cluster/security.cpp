#include "cluster/security.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "actors/supervisor/join_policy.hpp"
#include "cluster/detail/x509_names.hpp"

namespace tokenmill {
namespace {

namespace fs = std::filesystem;

struct free_pkey {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct free_x509 {
  void operator()(X509* p) const { X509_free(p); }
};
struct free_bio {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct free_store {
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
};
struct free_store_ctx {
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, free_pkey>;
using x509_ptr = std::unique_ptr<X509, free_x509>;
using bio_ptr = std::unique_ptr<BIO, free_bio>;

/// OpenSSL's queued errors as one line (and the queue emptied).
std::string ssl_errors() {
  std::string out;
  while (auto e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? std::string("no detail from OpenSSL") : out;
}

error_info bad(std::string what) {
  return error_info{errc::invalid_request, std::move(what)};
}

/// Refuses a private file (key, secret) that group or others may read.
std::string private_file_problem(const std::string& path, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return fmt::format("{} '{}' cannot be read: {}", what, path, std::strerror(errno));
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    return fmt::format(
        "{} '{}' is open to group or others (mode {:04o}); expected mode 0600 "
        "(chmod 600 '{}')",
        what, path, st.st_mode & 07777, path);
  return {};
}

result<x509_ptr> load_cert(const std::string& path, const char* what) {
  bio_ptr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return bad(fmt::format("{} '{}' cannot be read: {}", what, path, std::strerror(errno)));
  x509_ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert)
    return bad(fmt::format("{} '{}' is not a PEM certificate ({})", what, path, ssl_errors()));
  return cert;
}

result<pkey_ptr> load_key(const std::string& path) {
  if (auto p = private_file_problem(path, "the TLS key"); !p.empty()) return bad(p);
  bio_ptr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio)
    return bad(fmt::format("the TLS key '{}' cannot be read: {}", path, std::strerror(errno)));
  pkey_ptr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key)
    return bad(fmt::format("the TLS key '{}' is not a PEM private key without a passphrase ({})",
                           path, ssl_errors()));
  return key;
}

std::string common_name(X509* cert) {
  std::array<char, 256> cn{};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn.data(),
                                static_cast<int>(cn.size())) < 0)
    return {};
  return cn.data();
}

bool add_ext(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  X509_EXTENSION* ex = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
  if (!ex) return false;
  bool ok = X509_add_ext(cert, ex, -1) == 1;
  X509_EXTENSION_free(ex);
  return ok;
}

/// A certificate for `key` named `cn`, signed by `issuer`/`issuer_key` (self-signed when
/// `issuer` is null).
result<x509_ptr> make_cert(const std::string& cn, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key,
                           bool is_ca, uint32_t days) {
  x509_ptr x(X509_new());
  if (!x) return bad("X509_new failed: " + ssl_errors());
  uint64_t serial = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&serial), sizeof(serial)) != 1)
    return bad("no random bytes for a certificate serial: " + ssl_errors());
  serial >>= 1;  // positive
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set_uint64(X509_get_serialNumber(x.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);  // an hour of clock skew
  X509_gmtime_adj(X509_getm_notAfter(x.get()), static_cast<long>(days) * 86400L);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("tokenmill"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
  bool ok = add_ext(x.get(), &ctx, NID_basic_constraints,
                    is_ca ? "critical,CA:TRUE,pathlen:0" : "critical,CA:FALSE") &&
            add_ext(x.get(), &ctx, NID_key_usage,
                    is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") &&
            add_ext(x.get(), &ctx, NID_subject_key_identifier, "hash");
  if (ok && !is_ca) {
    auto san = "DNS:" + cn;
    ok = add_ext(x.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth") &&
         add_ext(x.get(), &ctx, NID_subject_alt_name, san.c_str()) &&
         add_ext(x.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  }
  if (!ok) return bad("cannot add certificate extensions: " + ssl_errors());
  if (X509_sign(x.get(), issuer_key ? issuer_key : key, EVP_sha256()) == 0)
    return bad("cannot sign the certificate: " + ssl_errors());
  return x;
}

/// Creates `path` (which must not exist) with `mode` and writes through `write`.
template <class F>
std::string write_new(const std::string& path, mode_t mode, F write) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return fmt::format("cannot create '{}': {}", path, std::strerror(errno));
  ::fchmod(fd, mode);  // whatever the umask says
  FILE* f = ::fdopen(fd, "w");
  if (!f) {
    ::close(fd);
    return fmt::format("cannot write '{}': {}", path, std::strerror(errno));
  }
  bool ok = write(f);
  ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    ::unlink(path.c_str());
    return fmt::format("cannot write '{}': {}", path, ssl_errors());
  }
  return {};
}

std::string write_key(const std::string& path, EVP_PKEY* key) {
  return write_new(path, 0600, [&](FILE* f) {
    return PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  });
}

std::string write_cert(const std::string& path, X509* cert) {
  return write_new(path, 0644, [&](FILE* f) { return PEM_write_X509(f, cert) == 1; });
}

result<pkey_ptr> new_key() {
  pkey_ptr k(EVP_EC_gen("P-256"));
  if (!k) return bad("cannot generate an EC key: " + ssl_errors());
  return k;
}

bool is_node_name(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

}  // namespace

result<std::vector<uint8_t>> read_secret_file(const std::string& path) {
  if (auto p = private_file_problem(path, "security.secret_file"); !p.empty()) return bad(p);
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return bad(
        fmt::format("security.secret_file '{}' cannot be read: {}", path, std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  auto text = ss.str();
  if (auto why = secret_problem(text))
    return bad(fmt::format("security.secret_file '{}': {}", path, *why));
  return secret_bytes(text);
}

namespace detail {

std::vector<std::string> x509_names(X509* cert) {
  std::vector<std::string> names;
  if (cert == nullptr) return names;
  if (auto cn = common_name(cert); !cn.empty()) names.push_back(std::move(cn));
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans == nullptr) return names;
  for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
    if (g->type != GEN_DNS) continue;
    const auto* data = ASN1_STRING_get0_data(g->d.dNSName);
    std::string dns(reinterpret_cast<const char*>(data),
                    static_cast<size_t>(ASN1_STRING_length(g->d.dNSName)));
    // A name with an embedded NUL is not a name this cluster issued.
    if (dns.find('\0') != std::string::npos) continue;
    if (std::find(names.begin(), names.end(), dns) == names.end()) names.push_back(std::move(dns));
  }
  GENERAL_NAMES_free(sans);
  return names;
}

}  // namespace detail

result<std::vector<std::string>> certificate_names(const std::string& path) {
  auto cert = load_cert(path, "the certificate");
  if (!cert) return cert.error();
  return detail::x509_names(cert->get());
}

result<std::string> check_tls_files(const tls_files& f) {
  auto ca = load_cert(f.ca, "the CA certificate (security.tls.ca)");
  if (!ca) return ca.error();
  auto cert = load_cert(f.cert, "the node certificate (security.tls.cert)");
  if (!cert) return cert.error();
  auto key = load_key(f.key);
  if (!key) return key.error();
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return bad(
        fmt::format("the TLS key '{}' does not belong to the certificate '{}'", f.key, f.cert));
  }
  std::unique_ptr<X509_STORE, free_store> store(X509_STORE_new());
  std::unique_ptr<X509_STORE_CTX, free_store_ctx> ctx(X509_STORE_CTX_new());
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca->get()) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert->get(), nullptr) != 1)
    return bad("cannot set up certificate verification: " + ssl_errors());
  if (X509_verify_cert(ctx.get()) != 1) {
    auto err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return bad(fmt::format("the certificate '{}' does not chain to the CA '{}': {}", f.cert, f.ca,
                           X509_verify_cert_error_string(err)));
  }
  return common_name(cert->get());
}

result<certs_report> create_cluster_certs(const std::string& dir,
                                          const std::vector<std::string>& nodes,
                                          const cert_options& opts) {
  for (const auto& n : nodes)
    if (!is_node_name(n)) return bad(fmt::format("'{}' is not a node name ([A-Za-z0-9_-]+)", n));
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    fs::create_directories(dir, ec);
    if (ec) return bad(fmt::format("cannot create '{}': {}", dir, ec.message()));
    fs::permissions(dir, fs::perms::owner_all, ec);
  } else if (!fs::is_directory(dir, ec)) {
    return bad(fmt::format("'{}' is not a directory", dir));
  }
  certs_report report;
  const std::string ca_crt = dir + "/ca.crt", ca_key = dir + "/ca.key";
  pkey_ptr ca_pkey;
  x509_ptr ca_cert;
  bool need_ca_key = false;
  for (const auto& n : nodes)
    need_ca_key = need_ca_key || !fs::exists(dir + "/" + n + ".crt", ec);
  if (fs::exists(ca_crt, ec)) {
    auto c = load_cert(ca_crt, "the CA certificate");
    if (!c) return c.error();
    ca_cert = std::move(*c);
    report.kept.push_back(ca_crt);
    if (need_ca_key) {
      if (!fs::exists(ca_key, ec))
        return bad(
            fmt::format("'{}' exists but its key '{}' does not: new node certificates "
                        "cannot be signed",
                        ca_crt, ca_key));
      auto k = load_key(ca_key);
      if (!k) return k.error();
      ca_pkey = std::move(*k);
    }
  } else {
    if (fs::exists(ca_key, ec))
      return bad(fmt::format("'{}' exists without '{}'; remove it or restore the certificate",
                             ca_key, ca_crt));
    auto k = new_key();
    if (!k) return k.error();
    auto c = make_cert("tokenmill cluster CA", k->get(), nullptr, nullptr, true, opts.days);
    if (!c) return c.error();
    if (auto e = write_key(ca_key, k->get()); !e.empty()) return bad(e);
    if (auto e = write_cert(ca_crt, c->get()); !e.empty()) return bad(e);
    report.created.push_back(ca_key);
    report.created.push_back(ca_crt);
    ca_pkey = std::move(*k);
    ca_cert = std::move(*c);
  }
  for (const auto& n : nodes) {
    const std::string crt = dir + "/" + n + ".crt", key = dir + "/" + n + ".key";
    if (fs::exists(crt, ec)) {
      report.kept.push_back(crt);
      continue;
    }
    if (fs::exists(key, ec)) ::unlink(key.c_str());  // a key without its certificate: redo both
    auto k = new_key();
    if (!k) return k.error();
    auto c = make_cert(n, k->get(), ca_cert.get(), ca_pkey.get(), false, opts.days);
    if (!c) return c.error();
    if (auto e = write_key(key, k->get()); !e.empty()) return bad(e);
    if (auto e = write_cert(crt, c->get()); !e.empty()) return bad(e);
    report.created.push_back(key);
    report.created.push_back(crt);
  }
  const std::string secret = dir + "/secret";
  if (fs::exists(secret, ec)) {
    report.kept.push_back(secret);
  } else {
    std::array<uint8_t, 32> raw{};
    if (!fill_random(raw)) return bad("no random bytes for the cluster secret: " + ssl_errors());
    auto hex = to_hex(raw) + "\n";
    if (auto e = write_new(secret, 0600, [&](FILE* f) { return std::fputs(hex.c_str(), f) >= 0; });
        !e.empty())
      return bad(e);
    report.created.push_back(secret);
  }
  return report;
}

}  // namespace tokenmill
