#include "actors/supervisor/node_certificates.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace tokenmill {

bool node_certificates::link_opened(std::vector<uint8_t> handshake,
                                    std::vector<std::string> names) {
  std::lock_guard lock{mutex_};
  for (auto& l : links_)
    if (l.handshake == handshake && l.names == names) {
      ++l.refs;
      return true;
    }
  if (links_.size() >= max_links_) return false;
  links_.push_back({std::move(handshake), std::move(names), 1});
  return true;
}

void node_certificates::link_closed(const std::vector<uint8_t>& handshake,
                                    const std::vector<std::string>& names) {
  std::lock_guard lock{mutex_};
  for (auto it = links_.begin(); it != links_.end(); ++it)
    if (it->handshake == handshake && it->names == names) {
      if (--it->refs == 0) links_.erase(it);
      return;
    }
}

std::vector<std::vector<std::string>> node_certificates::names_of(
    std::span<const uint8_t> node_key) const {
  std::vector<std::vector<std::string>> out;
  if (node_key.empty()) return out;
  std::lock_guard lock{mutex_};
  for (const auto& l : links_)
    if (l.handshake.size() >= node_key.size() &&
        std::equal(node_key.begin(), node_key.end(), l.handshake.begin()))
      out.push_back(l.names);
  return out;
}

size_t node_certificates::size() const {
  std::lock_guard lock{mutex_};
  return links_.size();
}

std::string judge_node_certificate(std::string_view node,
                                   const std::vector<std::vector<std::string>>& links) {
  if (links.empty())
    return "no TLS link of this node presented a certificate at this node's control port "
           "(its join did not come over a link the control gate authenticated)";
  for (const auto& names : links)
    if (std::find(names.begin(), names.end(), node) == names.end())
      return fmt::format(
          "its certificate is issued for {} (CN and subjectAltName), not for node '{}': each "
          "node must present its own certificate (tokenmill certs init writes one per node)",
          names.empty() ? std::string("no name") : fmt::format("'{}'", fmt::join(names, "', '")),
          node);
  return {};
}

}  // namespace tokenmill
