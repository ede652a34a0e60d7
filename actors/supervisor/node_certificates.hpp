#pragma once
/// Binds a node's TLS certificate to its node name (issue 18), free of CAF (STYLE.md §2).
///
/// Mutual TLS only proves that a peer holds *some* certificate of the cluster's CA. Without
/// more, the holder of node b's certificate could join as node a. The control gate of the
/// supervisor's node ends every inbound TLS link: it records the names the peer's
/// certificate carries (CN, then DNS subjectAltNames) together with the peer's BASP client
/// handshake, whose payload starts with the peer's CAF node id as CAF serializes it. At a
/// join, the supervisor serializes the joining agent's node id the same way, finds that
/// node's links and accepts the join only when every one of them presented a certificate
/// naming the node. The gate writes and the supervisor reads from different threads, so
/// the table is guarded.
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tokenmill {

/// The certificate names of the TLS links open to this node, by the peer's BASP client
/// handshake payload. Bounded: past `max_links` open links, new ones are not recorded (and
/// their nodes cannot join).
class node_certificates {
 public:
  explicit node_certificates(size_t max_links = 1024) : max_links_(max_links) {}

  /// A TLS link whose client handshake payload is `handshake` presented a certificate
  /// carrying `names`. The same handshake with the same names counts once more. False when
  /// the table is full (nothing recorded).
  bool link_opened(std::vector<uint8_t> handshake, std::vector<std::string> names);
  /// The link opened with `handshake` and `names` closed.
  void link_closed(const std::vector<uint8_t>& handshake, const std::vector<std::string>& names);

  /// The name sets of every open link whose handshake starts with `node_key` (a node id as
  /// CAF serializes it); empty when none.
  std::vector<std::vector<std::string>> names_of(std::span<const uint8_t> node_key) const;

  /// Links recorded now.
  size_t size() const;

 private:
  struct link {
    std::vector<uint8_t> handshake;
    std::vector<std::string> names;
    uint32_t refs = 0;
  };
  size_t max_links_;
  mutable std::mutex mutex_;
  std::vector<link> links_;
};

/// Whether node `node` may join, its links having presented certificates with the name sets
/// `links` (node_certificates::names_of): "" when there is at least one and each names the
/// node (exactly, as CN or DNS subjectAltName); otherwise why not, naming what was seen.
std::string judge_node_certificate(std::string_view node,
                                   const std::vector<std::vector<std::string>>& links);

}  // namespace tokenmill
