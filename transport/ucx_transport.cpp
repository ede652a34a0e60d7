#include "transport/ucx_transport.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <ucp/api/ucp.h>

#include "transport/detail/ucx_impl.hpp"

namespace tokenmill {

using ucx::clock_type;
using ucx::registered_pool;
using ucx::ucs_error;

namespace {

/// This host's identity for pool descriptors: the running kernel's boot id (the same for
/// every process and network namespace of the host), else the host name.
std::string host_identity() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (std::getline(in, id) && !id.empty()) return id;
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) == 0) return name;
  return {};
}

}  // namespace

ucx_transport::ucx_transport(std::unique_ptr<impl> impl) : impl_(std::move(impl)) {}

ucx_transport::~ucx_transport() = default;

result<std::shared_ptr<ucx_transport>> ucx_transport::create(ucx_config cfg) {
  auto im = std::make_unique<impl>();
  im->cfg_ = cfg;
  im->peers_ = announced_pools(cfg.announced_only);
  im->host_ = host_identity();
  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);  // honours UCX_* env
  if (st != UCS_OK) return ucs_error(st, "ucp_config_read");
  ucx::config_ptr config{raw_config};
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  ucp_context_h context = nullptr;
  st = ucp_init(&params, config.get(), &context);
  if (st != UCS_OK) return ucs_error(st, "ucp_init");
  im->context_.reset(context);

  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  st = ucp_context_query(context, &attr);
  if (st == UCS_OK) {
    im->cuda_supported_ = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    // Once per process: every context of one UCX build answers the same.
    static std::once_flag logged;
    std::call_once(logged, [&] {
      spdlog::info("ucx: CUDA memory {}",
                   im->cuda_supported_
                       ? "supported: device pools are registered directly"
                       : "not supported by this UCX: device pools are staged through host memory");
    });
  } else {
    spdlog::warn("{}; device pools will be staged through host memory",
                 ucs_error(st, "ucp_context_query").message);
  }

  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches it
  ucp_worker_h worker = nullptr;
  st = ucp_worker_create(context, &wp, &worker);
  if (st != UCS_OK) return ucs_error(st, "ucp_worker_create");
  im->worker_.reset(worker);

  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  st = ucp_worker_get_address(worker, &addr, &addr_len);
  if (st != UCS_OK) return ucs_error(st, "ucp_worker_get_address");
  {
    ucx::address_ptr address{addr, ucx::address_deleter{worker}};
    auto* bytes = reinterpret_cast<const uint8_t*>(addr);
    im->worker_address_.assign(bytes, bytes + addr_len);
  }

  if (!cfg.busy_poll) {
    st = ucp_worker_get_efd(worker, &im->worker_efd_);
    if (st != UCS_OK) return ucs_error(st, "ucp_worker_get_efd");
  }
  im->wake_fd_.fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (im->wake_fd_.fd < 0)
    return error_info{errc::unavailable, fmt::format("ucx: eventfd: {}", std::strerror(errno))};
  auto* raw = im.get();
  im->thread_ = std::thread([raw] { raw->run(); });
  im->start_staging();
  return std::shared_ptr<ucx_transport>(new ucx_transport(std::move(im)));
}

bool ucx_transport::cuda_memory_supported() const {
  return impl_->cuda_supported_;
}

kv_transport_stats ucx_transport::stats() const {
  return impl_->stats();
}

pool_descriptor ucx_transport::register_pool(worker_id owner, pool_memory& pool,
                                             size_t block_bytes) {
  std::span<std::byte> memory = pool.bytes();
  pool_descriptor failed;
  failed.owner = owner;
  failed.block_bytes = block_bytes;
  if (memory.empty() || block_bytes == 0 || memory.size() % block_bytes != 0) {
    spdlog::error("ucx: pool of {} B for worker {} is not a whole number of {} B blocks",
                  memory.size(), owner, block_bytes);
    return failed;
  }
  auto reg = std::make_unique<registered_pool>();
  reg->begin = memory.data();
  reg->end = memory.data() + memory.size();
  std::span<std::byte> mapped = memory;  // what UCX maps and peers put into
  if (pool.kind() == memory_kind::cuda && impl_->cuda_supported_) {
    reg->memory_type = UCS_MEMORY_TYPE_CUDA;
  } else if (pool.kind() != memory_kind::host) {
    try {
      reg->staging = pool.make_host_staging(memory.size());
    } catch (const std::exception& e) {
      spdlog::error("ucx: no host staging for the {} pool of worker {} ({} B): {}",
                    memory_kind_name(pool.kind()), owner, memory.size(), e.what());
      return failed;
    }
    if (!reg->staging || reg->staging->kind() != memory_kind::host ||
        reg->staging->bytes().size() < memory.size()) {
      spdlog::error("ucx: the {} pool of worker {} gave no usable host staging of {} B",
                    memory_kind_name(pool.kind()), owner, memory.size());
      return failed;
    }
    mapped = reg->staging->bytes().first(memory.size());
    spdlog::info("ucx: the {} pool of worker {} ({} B) is staged through host memory",
                 memory_kind_name(pool.kind()), owner, memory.size());
  }
  auto promise = std::make_shared<std::promise<pool_descriptor>>();
  auto future = promise->get_future();
  impl* im = impl_.get();
  // std::function needs a copyable callable: the task owns `reg` through a raw pointer.
  impl_->submit(
      [im, promise, owner, mapped, block_bytes, failed, raw = reg.release()](bool cancelled) {
        std::unique_ptr<registered_pool> r{raw};
        if (cancelled) return promise->set_value(failed);
        promise->set_value(im->do_register(owner, mapped, block_bytes, std::move(r)));
      });
  return future.get();
}

std::string ucx_transport::impl::refuse_peer(const pool_descriptor& peer, const char* what) {
  std::string why;
  {
    std::lock_guard lock{peers_mutex_};
    why = peers_.check(peer);
  }
  if (why.empty()) return why;
  peers_refused_.fetch_add(1, std::memory_order_relaxed);
  spdlog::warn("ucx: refused to {} worker {}: {}; no endpoint created", what, peer.owner, why);
  return why;
}

void ucx_transport::announce_pools(std::span<const pool_descriptor> pools) {
  std::lock_guard lock{impl_->peers_mutex_};
  impl_->peers_.replace(pools);
}

bool ucx_transport::accepts_peer(const pool_descriptor& peer) const {
  std::lock_guard lock{impl_->peers_mutex_};
  return impl_->peers_.check(peer).empty();
}

void ucx_transport::connect(const pool_descriptor& peer) {
  if (peer.worker_address.empty()) return;
  if (!impl_->refuse_peer(peer, "connect to").empty()) return;
  impl* im = impl_.get();
  const bool same_host = !peer.host.empty() && peer.host == impl_->host_;
  impl_->submit([im, address = peer.worker_address, same_host](bool cancelled) {
    if (!cancelled) im->start_connect(address, same_host);
  });
}

void ucx_transport::write(const pool_memory& pool, size_t block_bytes,
                          std::span<const block_id> src, const pool_descriptor& peer,
                          std::span<const block_id> dst, completion done) {
  std::span<const std::byte> local = pool.bytes();
  auto invalid = [&](std::string msg) {
    error_info err{errc::invalid_request, "ucx write: " + std::move(msg)};
    impl_->count(err, 0);
    done(std::move(err), {});
  };
  if (src.size() != dst.size())
    return invalid(fmt::format("{} source blocks for {} destinations", src.size(), dst.size()));
  if (block_bytes == 0 || peer.block_bytes != block_bytes)
    return invalid(fmt::format("block size {} B does not match the peer's {} B", block_bytes,
                               peer.block_bytes));
  if (peer.remote_key.size() <= 8 || peer.worker_address.empty())
    return invalid(
        fmt::format("peer descriptor of worker {} has no remote key or address", peer.owner));
  size_t local_blocks = local.size() / block_bytes;
  for (size_t i = 0; i < src.size(); ++i)
    if (src[i] >= local_blocks || dst[i] >= peer.num_blocks)
      return invalid(fmt::format("block {}->{} out of range ({} local, {} peer)", src[i], dst[i],
                                 local_blocks, peer.num_blocks));
  const registered_pool* reg = impl_->find_pool(local);
  if (reg == nullptr) return invalid("local memory is not inside a registered pool");
  // Before any endpoint or rkey exists for it: an unannounced pool gets nothing.
  if (auto why = impl_->refuse_peer(peer, "write to"); !why.empty()) {
    error_info err{errc::unauthenticated, "ucx write: " + why};
    impl_->count(err, 0);
    return done(std::move(err), {});
  }
  if (src.empty()) {
    impl_->count({}, 0);
    return done(error_info{}, kv_payload{});
  }

  auto op = std::make_unique<impl::write_op>();
  op->peer = peer.owner;
  op->address = peer.worker_address;
  op->same_host = !peer.host.empty() && peer.host == impl_->host_;
  op->remote_key = peer.remote_key;
  op->block_bytes = block_bytes;
  op->dst.assign(dst.begin(), dst.end());
  op->bytes = uint64_t{src.size()} * block_bytes;
  op->done = std::move(done);
  op->deadline = clock_type::now() + impl_->cfg_.op_timeout;
  uint64_t base = 0;
  for (int i = 7; i >= 0; --i)
    base = (base << 8) | peer.remote_key[static_cast<size_t>(i)];
  // Runs of consecutive (src, dst) ids become one segment: one put each.
  op->segments = coalesce_blocks(src, dst, block_bytes, base);
  const auto offset = static_cast<size_t>(local.data() - reg->begin);
  if (reg->staging) {
    op->staged = &pool;
    op->put_base = reg->mirror() + offset;
  } else {
    op->put_base = local.data();
    op->memory_type = reg->memory_type;
  }
  impl* im = impl_.get();
  // std::function needs a copyable callable: the task owns the op through a raw pointer and
  // runs exactly once (cancelled at shutdown).
  impl_->submit([im, raw = op.release()](bool cancelled) {
    std::unique_ptr<impl::write_op> w{raw};
    if (cancelled) {
      error_info err{errc::unavailable, "ucx: transport stopped before the write"};
      im->count(err, 0);
      return w->done(std::move(err), {});
    }
    w->id = im->next_op_++;
    im->enqueue(std::move(w));
  });
}

error_info ucx_transport::deliver(const kv_payload& payload, pool_memory& pool,
                                  size_t block_bytes) {
  std::span<const std::byte> local = pool.bytes();
  if (block_bytes == 0) return {errc::invalid_request, "ucx deliver: block size 0"};
  if (!payload.bytes.empty())
    return {errc::kv_corrupt,
            fmt::format("ucx deliver: a one-sided payload carries {} B", payload.bytes.size())};
  size_t local_blocks = local.size() / block_bytes;
  for (auto b : payload.dst_blocks)
    if (b >= local_blocks)
      return {
          errc::kv_corrupt,
          fmt::format("ucx deliver: payload names block {} of a {}-block pool", b, local_blocks)};
  const registered_pool* reg = impl_->find_pool(local);
  if (reg == nullptr && pool.kind() != memory_kind::host)
    return {errc::internal, fmt::format("ucx deliver: the {} pool is not registered here",
                                        memory_kind_name(pool.kind()))};
  if (reg == nullptr || !reg->staging) return {};  // the bytes are in place
  // Staged: the peer put into the mirror; copy the delivered blocks (runs of consecutive
  // ids at once) to the device.
  const std::byte* mirror = reg->mirror() + (local.data() - reg->begin);
  const auto& ids = payload.dst_blocks;
  try {
    for (size_t i = 0; i < ids.size();) {
      size_t run = 1;
      while (i + run < ids.size() && ids[i + run] == ids[i] + run)
        ++run;
      const size_t off = size_t{ids[i]} * block_bytes;
      pool.copy_in(off, mirror + off, run * block_bytes);
      i += run;
    }
  } catch (const std::exception& e) {
    return {errc::internal,
            fmt::format("ucx deliver: copying staged blocks to the device failed: {}", e.what())};
  }
  return {};
}

}  // namespace tokenmill
