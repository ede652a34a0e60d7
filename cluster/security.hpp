#pragma once
/// Node authentication material, CAF-free: the cluster secret's file, the TLS files a node
/// presents and trusts (checked before a node starts, so that a bad file is an error naming
/// it rather than a silent handshake failure later), and the cluster CA and node
/// certificates `tokenmill certs init` and `tokenmill launch` (tls: auto) create. OpenSSL.
#include <cstdint>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace tokenmill {

/// The secret in `path`: refused when the file is missing, readable by group or others, or
/// holds fewer than 16 bytes. Errors name the file (never the secret).
result<std::vector<uint8_t>> read_secret_file(const std::string& path);

/// The files one node uses for mutual TLS.
struct tls_files {
  std::string ca;    ///< the cluster CA's certificate
  std::string cert;  ///< this node's certificate
  std::string key;   ///< this node's private key
};

/// Checks that the files load, that the key belongs to the certificate and that the
/// certificate chains to the CA. Returns the certificate's subject common name.
result<std::string> check_tls_files(const tls_files& f);

/// The names the certificate in `path` is issued for: its common name, then its DNS
/// subjectAltNames. A node joins only under a name its certificate carries
/// (actors/supervisor/node_certificates.hpp). Errors name the file.
result<std::vector<std::string>> certificate_names(const std::string& path);

struct cert_options {
  uint32_t days = 825;  ///< validity of the CA and of node certificates
};

/// What create_cluster_certs did, one line per file, for the user.
struct certs_report {
  std::vector<std::string> created;
  std::vector<std::string> kept;
};

/// In `dir` (created 0700 when missing): the CA (ca.crt, ca.key) when absent, a certificate
/// and key (NODE.crt, NODE.key) for each of `nodes` that has none, signed by the CA, and a
/// cluster secret (`secret`, 64 hex digits) when absent. Existing files are kept, so that
/// nodes can be added later. Keys and the secret are written 0600. ECDSA P-256, SHA-256;
/// node certificates carry the node name as CN and subjectAltName (DNS) and may serve as
/// TLS client and server.
result<certs_report> create_cluster_certs(const std::string& dir,
                                          const std::vector<std::string>& nodes,
                                          const cert_options& opts = {});

}  // namespace tokenmill
