#include "engine/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace tokenmill {

bool read_file_bytes(const std::string& path, uint64_t offset, std::byte* dst, size_t size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, dst + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return done == size;
}

result<std::shared_ptr<const mapped_file>> mapped_file::open(const std::string& path) {
  auto fail = [&](std::string_view what, int err) {
    return error_info{errc::invalid_model,
                      path + ": " + std::string(what) + ": " + std::strerror(err)};
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("cannot open", errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return fail("cannot stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return error_info{errc::invalid_model, path + ": not a regular file"};
  }
  size_t size = static_cast<size_t>(st.st_size);
  const std::byte* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return fail("cannot map", err);
    }
    data = static_cast<const std::byte*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  try {
    return std::shared_ptr<const mapped_file>(new mapped_file(data, size));
  } catch (const std::bad_alloc&) {
    if (data) ::munmap(const_cast<std::byte*>(data), size);
    return error_info{errc::invalid_model, path + ": out of memory"};
  }
}

void mapped_file::release_pages() const {
  // Advice only: failing leaves the pages mapped, still correct.
  if (data_) ::madvise(const_cast<std::byte*>(data_), size_, MADV_DONTNEED);
}

mapped_file::~mapped_file() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace tokenmill
