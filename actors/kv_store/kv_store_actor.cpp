// The kv-store: the cluster's block index, fed by workers' stored/removed events.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/detail/worker_common.hpp"
#include "actors/kv_store/kv_index.hpp"

namespace tokenmill {
namespace {

struct kv_store_state {
  worker_info info;
  kv_index index;
  uint64_t events = 0;
  static inline const char* name = "kv_store";
};

caf::behavior kv_store(caf::stateful_actor<kv_store_state>* self, worker_info info,
                       caf::actor sup) {
  self->state.info = info;
  register_with_supervisor(self, sup, info, "kv_store");
  return {
      [self](const kv_event& e) {
        ++self->state.events;
        if (e.stored)
          self->state.index.stored(e.worker, e.hashes);
        else
          self->state.index.removed(e.worker, e.hashes);
      },
      [self](const overlap_query& q) {
        overlap_reply r;
        for (auto [w, n] : self->state.index.overlap(q.hashes))
          r.workers.push_back({w, n});
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
        const auto blocks = st.index.blocks();
        ws.detail = fmt::format(
            "{} blocks indexed ({} holder entries, {} workers), {} events; index {:.1f} MiB, {} "
            "bytes per block",
            blocks, st.index.entries(), st.index.workers(), st.events,
            static_cast<double>(st.index.memory_bytes()) / (1 << 20),
            blocks ? st.index.memory_bytes() / blocks : 0);
        return ws;
      },
  };
}

}  // namespace

caf::actor spawn_kv_store(caf::actor_system& sys, worker_info info, caf::actor supervisor) {
  return sys.spawn(kv_store, std::move(info), std::move(supervisor));
}

}  // namespace tokenmill
