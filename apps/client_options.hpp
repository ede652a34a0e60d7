#pragma once
/// The options every command-line client shares to get past a protected frontend.
#include <string>

#include <CLI/CLI.hpp>

#include "frontend/client.hpp"

namespace tokenmill::app {

/// Adds --api-key (and, for Cap'n Proto clients, --tls-ca) to `app`, into `o`. Call
/// resolve_client_options before connecting.
inline void add_client_options(CLI::App& app, client_options& o, bool rpc = true) {
  app.add_option("--api-key", o.api_key,
                 "API key for a server started with --api-key or --api-key-file (default: "
                 "$TOKENMILL_API_KEY)");
  if (rpc)
    app.add_option("--tls-ca", o.tls_ca,
                   "The RPC port speaks TLS: trust this PEM CA certificate (it must name the "
                   "host of --connect)");
}

/// Fills in $TOKENMILL_API_KEY when no --api-key was given.
inline void resolve_client_options(client_options& o) {
  o.api_key = api_key_or_env(o.api_key);
}

}  // namespace tokenmill::app
