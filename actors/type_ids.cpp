#include "actors/type_ids.hpp"

#include <utility>

namespace tokenmill {
namespace {

/// The type with id `begin + I` of the block, under its block name.
template <size_t... I>
void register_block(caf::actor_system_config& cfg, std::index_sequence<I...>) {
  constexpr auto begin = caf::id_block::tokenmill::begin;
  (cfg.add_message_type<typename caf::type_by_id<begin + I>::type>(
       caf::type_name_by_id<begin + I>::value),
   ...);
}

}  // namespace

void register_types(caf::actor_system_config& cfg) {
  using block = caf::id_block::tokenmill;
  register_block(cfg, std::make_index_sequence<block::end - block::begin>{});
}

}  // namespace tokenmill
