#include "engine/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>

namespace tokenmill {

namespace {

constexpr size_t huge_page_bytes = size_t{2} << 20;

/// Closes the descriptor when open() returns, whichever way.
struct fd_closer {
  int fd;
  ~fd_closer() {
    if (fd >= 0) ::close(fd);
  }
};

/// Anonymous memory of `bytes` rounded up to 2 MiB, starting on a 2 MiB boundary (so that
/// every 2 MiB of it can be one huge page), advised MADV_HUGEPAGE. nullptr and errno on
/// failure. The advice failing (THP compiled out) is not an error: the copy still works.
std::byte* map_huge_region(size_t bytes) {
  const size_t over = bytes + huge_page_bytes;
  void* p = ::mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  auto base = reinterpret_cast<uintptr_t>(p);
  auto aligned = (base + huge_page_bytes - 1) & ~(huge_page_bytes - 1);
  // Trim the unaligned head and whatever lies past the rounded size.
  if (aligned > base) ::munmap(p, aligned - base);
  const size_t tail = base + over - (aligned + bytes);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  ::madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
  return reinterpret_cast<std::byte*>(aligned);
}

}  // namespace

result<std::shared_ptr<const mapped_file>> mapped_file::open(const std::string& path,
                                                             bool huge_copy) {
  auto fail = [&](std::string_view what, int err) {
    return error_info{errc::invalid_model,
                      path + ": " + std::string(what) + ": " + std::strerror(err)};
  };
  fd_closer fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) return fail("cannot open", errno);
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) return fail("cannot stat", errno);
  if (!S_ISREG(st.st_mode)) return error_info{errc::invalid_model, path + ": not a regular file"};
  const size_t size = static_cast<size_t>(st.st_size);
  std::byte* data = nullptr;
  size_t region = size;
  if (size > 0 && huge_copy) {
    region = (size + huge_page_bytes - 1) & ~(huge_page_bytes - 1);
    data = map_huge_region(region);
    if (!data) return fail("cannot allocate huge-page memory for a copy", errno);
    // Read straight into the huge pages: each first touch of 2 MiB faults in one page.
    for (size_t done = 0; done < size;) {
      ssize_t n = ::pread(fd.fd, data + done, size - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int err = n < 0 ? errno : EIO;  // 0: the file shrank under us
        ::munmap(data, region);
        return fail("cannot read into the huge-page copy", err);
      }
      done += static_cast<size_t>(n);
    }
    ::mprotect(data, region, PROT_READ);  // the weights are read-only, as when mapped
  } else if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
    if (p == MAP_FAILED) return fail("cannot map", errno);
    data = static_cast<std::byte*>(p);
  }
  try {
    return std::shared_ptr<const mapped_file>(
        new mapped_file(data, size, region, huge_copy && size > 0));
  } catch (const std::bad_alloc&) {
    if (data) ::munmap(data, region);
    return error_info{errc::invalid_model, path + ": out of memory"};
  }
}

mapped_file::~mapped_file() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), region_bytes_);
}

}  // namespace tokenmill
