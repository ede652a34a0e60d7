#pragma once
/// The names a certificate is issued for, for binding a node's certificate to its node
/// name (actors/supervisor/node_certificates.hpp). Internal to cluster/: the control gate
/// reads them from a peer's certificate, `certificate_names` (security.hpp) from a file.
#include <string>
#include <vector>

struct x509_st;  // OpenSSL's X509

namespace tokenmill::detail {

/// The subject's common name first (when it has one), then every DNS subjectAltName, in
/// the certificate's order, without duplicates.
std::vector<std::string> x509_names(x509_st* cert);

}  // namespace tokenmill::detail
