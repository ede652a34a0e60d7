#pragma once
/// The node's control port: a TCP relay in front of CAF's middleman, which listens on
/// loopback only. Each connection a peer opens is relayed to the middleman once its bytes
/// pass basp_inbound_check (cluster/basp_frame.hpp): a client handshake first, frames
/// checked and forwarded whole. Bytes that cannot be BASP from a tokenmill node cost only
/// their own connection; before, twenty connections of random bytes took the node (and,
/// at the supervisor's node, the cluster) down. One thread, Boost.Asio.
///
/// With TLS (manifest security.tls) the gate is the server end of every inbound TLS link:
/// it presents the node's certificate, requires the peer's, accepts it only when it chains
/// to the cluster CA, and logs why a peer was refused (no certificate, another CA, not TLS
/// at all). Decrypted bytes then pass the same BASP check, and the names the peer's
/// certificate carries are recorded with the peer's node id (control_gate_config::
/// certificates) for the supervisor's join check. Outbound links are TLS through
/// CAF's OpenSSL module (cluster/node.cpp), with the same files.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "actors/supervisor/node_certificates.hpp"
#include "cluster/basp_frame.hpp"
#include "cluster/security.hpp"
#include "common/result.hpp"

namespace tokenmill {

struct control_gate_config {
  std::string host;            ///< the address to listen on (the node's address)
  uint16_t port = 0;           ///< 0: any free port
  uint16_t upstream_port = 0;  ///< the middleman's loopback port
  basp_limits limits;          ///< what a frame may be
  std::chrono::milliseconds handshake_timeout{5000};  ///< from accept to a client handshake
  uint32_t max_unauthenticated = 64;  ///< connections without a handshake yet; more are refused
  /// Mutual TLS on the control port: this node's certificate and key, and the CA that peers'
  /// certificates must chain to. Absent: plain TCP.
  std::optional<tls_files> tls;
  /// With TLS: where each inbound link's certificate names are recorded with its BASP client
  /// handshake, before CAF sees the handshake, so that the supervisor can bind a joining
  /// node's name to its certificate. Null: not recorded.
  std::shared_ptr<node_certificates> certificates;
};

struct control_gate_stats {
  uint64_t accepted = 0;     ///< connections accepted
  uint64_t rejected = 0;     ///< closed for bytes that are not acceptable BASP
  uint64_t timed_out = 0;    ///< closed for sending no handshake in time
  uint64_t refused = 0;      ///< closed at once: too many connections without a handshake
  uint64_t tls_refused = 0;  ///< closed for failing the TLS handshake (certificate, not TLS)
};

class control_gate {
 public:
  explicit control_gate(control_gate_config cfg);
  ~control_gate();
  control_gate(const control_gate&) = delete;
  control_gate& operator=(const control_gate&) = delete;

  /// Binds and starts relaying; returns the bound port. With TLS, fails (naming the file)
  /// when the certificate, key or CA cannot be used.
  result<uint16_t> start();
  void stop();
  control_gate_stats stats() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace tokenmill
