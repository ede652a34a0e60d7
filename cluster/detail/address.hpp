#pragma once
/// Address checks and port probes of the manifest parser: which strings are IP addresses
/// or host names, which of them are this host's, and whether a port can be bound now.
#include <cstdint>
#include <string>
#include <string_view>

namespace tokenmill::detail {

/// `s` in lower case (ASCII).
std::string lower(std::string_view s);

bool is_ipv4(const std::string& s);
bool is_ipv6(const std::string& s);

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
bool is_host_name(std::string_view s);

/// An IPv4 or IPv6 address or a host name.
bool is_address(const std::string& s);

/// Loopback or "localhost": an address of this host whose ports we can probe.
bool is_local_address(const std::string& s);

/// "0.0.0.0" or "::": every interface, so it clashes with any address on the same port.
bool is_wildcard(const std::string& s);

/// The form two endpoints are compared in: "localhost" and 127.0.0.1 are one address.
std::string normal_host(const std::string& s);

/// Empty when `host:port` can be bound right now, else why not (strerror text).
std::string try_bind(const std::string& host, uint16_t port);

}  // namespace tokenmill::detail
