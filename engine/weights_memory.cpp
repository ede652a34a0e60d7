#include "engine/weights_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace tokenmill {

namespace {

constexpr size_t huge_page_bytes = size_t{2} << 20;

}  // namespace

result<std::shared_ptr<const huge_copy>> huge_copy::start(const std::string& path,
                                                          std::shared_ptr<const mapped_file> map) {
  const size_t size = map ? map->size() : 0;
  const size_t region = (size + huge_page_bytes - 1) & ~(huge_page_bytes - 1);
  std::byte* data = nullptr;
  if (region > 0) {
    // Over-allocate by 2 MiB, keep the aligned part, unmap the rest.
    const size_t over = region + huge_page_bytes;
    void* p = ::mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      return error_info{errc::invalid_model,
                        path + ": cannot allocate " + std::to_string(region) +
                            " bytes for a huge-page copy: " + std::strerror(errno)};
    const auto base = reinterpret_cast<uintptr_t>(p);
    const auto aligned = (base + huge_page_bytes - 1) & ~(huge_page_bytes - 1);
    if (aligned > base) ::munmap(p, aligned - base);
    if (base + over > aligned + region)
      ::munmap(reinterpret_cast<void*>(aligned + region), base + over - (aligned + region));
    // Failing advice (THP compiled out) leaves 4 KiB pages: still a correct copy.
    ::madvise(reinterpret_cast<void*>(aligned), region, MADV_HUGEPAGE);
    data = reinterpret_cast<std::byte*>(aligned);
  }
  std::shared_ptr<huge_copy> c(new huge_copy(data, size, region));
  std::promise<void> done;
  c->filled_ = done.get_future().share();
  c->filler_ = std::thread(
      [path, size, data, region, map = std::move(map), done = std::move(done)]() mutable {
        if (size > 0) {
          // pread, not a copy from the mapping, which would map every page of the file.
          if (!read_file_bytes(path, 0, data, size)) std::memcpy(data, map->data(), size);
          ::mprotect(data, region, PROT_READ);
          // The copy from the mapping maps the whole file; the copy holds its bytes now.
          map->release_pages();
        }
        map.reset();
        done.set_value();
      });
  return std::shared_ptr<const huge_copy>(std::move(c));
}

huge_copy::~huge_copy() {
  if (filler_.joinable()) filler_.join();
  if (data_) ::munmap(data_, region_);
}

result<weights_hugepages> parse_weights_hugepages(std::string_view text, std::string_view what) {
  if (text == "on") return weights_hugepages::on;
  if (text == "off") return weights_hugepages::off;
  if (text == "auto") return weights_hugepages::auto_;
  return error_info{errc::invalid_request, std::string(what) + ": '" + std::string(text) +
                                               "' is not one of on, off, auto"};
}

std::string_view to_string(weights_hugepages mode) {
  switch (mode) {
    case weights_hugepages::on:
      return "on";
    case weights_hugepages::off:
      return "off";
    case weights_hugepages::auto_:
      return "auto";
  }
  return "auto";
}

bool use_weights_hugepages(weights_hugepages mode, std::string_view thp_enabled) {
  if (mode != weights_hugepages::auto_) return mode == weights_hugepages::on;
  auto open = thp_enabled.find('[');
  auto close = thp_enabled.find(']', open == std::string_view::npos ? 0 : open);
  if (open == std::string_view::npos || close == std::string_view::npos) return false;
  auto active = thp_enabled.substr(open + 1, close - open - 1);
  return active == "always" || active == "madvise";
}

std::string read_thp_enabled() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

uint64_t anon_huge_bytes() {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("AnonHugePages:", 0) != 0) continue;
    std::istringstream s(line.substr(14));
    uint64_t kib = 0;
    s >> kib;
    return kib * 1024;
  }
  return 0;
}

}  // namespace tokenmill
