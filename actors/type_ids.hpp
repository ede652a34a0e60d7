#pragma once
/// The single place where message types are registered with CAF (STYLE.md §1). Names go
/// on the wire between nodes, so they must be identical on every node.
#include <caf/actor_system_config.hpp>

namespace tokenmill {

/// Registers every type of actors/protocol.hpp with `cfg`.
void register_types(caf::actor_system_config& cfg);

}  // namespace tokenmill
