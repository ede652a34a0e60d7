// The kv-store: the cluster's block index, fed by workers' stored/removed events, one
// index per level (pool, host tier, disk tier).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/detail/worker_common.hpp"
#include "actors/kv_store/tiered_index.hpp"

namespace tokenmill {
namespace {

struct kv_store_state {
  worker_info info;
  tiered_index index;
  uint64_t events = 0;
  uint64_t bad_events = 0;  ///< events naming a level this store does not know
  static inline const char* name = "kv_store";
};

caf::behavior kv_store(caf::stateful_actor<kv_store_state>* self, worker_info info,
                       caf::actor sup) {
  self->state.info = info;
  register_with_supervisor(self, sup, info, "kv_store");
  return {
      [self](const kv_event& e) {
        ++self->state.events;
        if (!self->state.index.apply(e.worker, e.stored, e.hashes, e.tier) &&
            self->state.bad_events++ == 0)
          spdlog::warn(
              "kv_store: event of worker {} names KV tier {}, which is not pool (0), "
              "host (1) or disk (2); ignored (logged once)",
              e.worker, static_cast<unsigned>(e.tier));
      },
      [self](const overlap_query& q) {
        overlap_reply r;
        for (auto& o : self->state.index.overlap(q.hashes, q.chunks))
          r.workers.push_back(
              {o.worker, o.blocks, o.host_blocks, o.disk_blocks, std::move(o.chunks)});
        return r;
      },
      [self](const membership& m) {
        for (const auto& mem : m.members)
          if (!mem.up) self->state.index.drop_worker(mem.info.id);
      },
      [self](status_atom) {
        auto& st = self->state;
        worker_status ws;
        ws.id = st.info.id;
        ws.kind = role::kv_store;
        ws.name = st.info.name;
        ws.node = st.info.node;
        ws.completed = st.events;
        const auto& pool = st.index.level(kv_tier_level::pool);
        const auto& host = st.index.level(kv_tier_level::host);
        const auto& disk = st.index.level(kv_tier_level::disk);
        const auto blocks = pool.blocks();
        ws.detail = fmt::format(
            "{} blocks indexed ({} holder entries, {} workers), {} events; index {:.1f} MiB, {} "
            "bytes per block",
            blocks, pool.entries(), pool.workers(), st.events,
            static_cast<double>(pool.memory_bytes()) / (1 << 20),
            blocks ? pool.memory_bytes() / blocks : 0);
        if (host.entries() + disk.entries() > 0)
          ws.detail += fmt::format("; second tier: {} host, {} disk holder entries", host.entries(),
                                   disk.entries());
        return ws;
      },
  };
}

}  // namespace

caf::actor spawn_kv_store(caf::actor_system& sys, worker_info info, caf::actor supervisor) {
  return sys.spawn(kv_store, std::move(info), std::move(supervisor));
}

}  // namespace tokenmill
