// The temporary is `.<name>.tmp-<12 random characters>` in the target's directory: hidden,
// unique per writer, created with open(O_CREAT | O_EXCL | O_NOFOLLOW) and retried under a new
// name if one exists (a planted file or link at a guessed name costs a retry, never a write
// through it). Mode 0666 less the umask, like any file the user creates.
#include "io/atomic_file.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <sys/random.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include "mixpa/error.h"

namespace mixpa {
namespace {

std::string errno_text(int e) { return std::strerror(e); }

std::string printable_path(const std::string& path) {
  std::string r;
  for (char c : path) r += c == '\0' ? std::string("\\x00") : std::string(1, c);
  return r;
}

std::string directory_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// 12 characters of [0-9a-z]: from getrandom() where it answers, else from a per-process
// counter mixed with the pid, thread and clock (uniqueness is guaranteed by O_EXCL either way).
std::string random_suffix() {
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t bits[2] = {0, 0};
  if (::getrandom(bits, sizeof bits, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof bits)) {
    bits[0] = mix(static_cast<std::uint64_t>(::getpid()) ^ (counter.fetch_add(1) << 32));
    bits[1] = mix(std::hash<std::thread::id>{}(std::this_thread::get_id()) ^
                  static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  }
  static constexpr char kAlphabet[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::string s(12, '0');
  for (int i = 0; i < 12; ++i) {
    std::uint64_t& b = bits[i / 6];
    s[i] = kAlphabet[b % 36];
    b /= 36;
  }
  return s;
}

// "--output out.safetensors" or just "out.safetensors": how messages name the target.
std::string named(const std::string& what, const std::string& path) { return what.empty() ? path : what + " " + path; }

// The target is renamed over, so it must be a file name whose current entry (if any) is a
// regular file or a link: never a directory, and never a device or FIFO (renaming over
// /dev/null as root would replace the device).
void require_replaceable(const std::string& path, const std::string& what) {
  if (path.empty()) throw Error((what.empty() ? "output" : what) + ": empty file name");
  if (path.find('\0') != std::string::npos) throw Error(named(what, printable_path(path)) + ": contains a NUL byte");
  struct stat st{};
  if (path.back() == '/' || (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)))
    throw Error(named(what, path) + ": is a directory, expected a file name");
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
    throw Error(named(what, path) + ": is not a regular file (a device or FIFO cannot be replaced)");
}

// Creates the temporary; returns its descriptor and sets `tmp`. Throws naming `what` and `path`.
int create_temporary(const std::string& path, const std::string& what, std::string& tmp) {
  require_replaceable(path, what);
  const std::string dir = directory_of(path), prefix = dir + "/." + base_name(path) + ".tmp-";
  for (int attempt = 0; attempt < 100; ++attempt) {
    tmp = prefix + random_suffix();
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    if (errno != EEXIST) {
      const int e = errno;
      throw Error(named(what, path) + ": cannot create a file in directory '" + dir + "': " + errno_text(e));
    }
  }
  throw Error(named(what, path) + ": cannot find an unused temporary name in '" + dir + "'");
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  fd_ = create_temporary(path_, "", tmp_);
}

AtomicFileWriter::~AtomicFileWriter() { discard(); }

void AtomicFileWriter::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
  tmp_.clear();
}

void AtomicFileWriter::write(const void* data, std::size_t size) {
  if (fd_ < 0) throw Error(path_ + ": write after the file was committed or discarded");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : ENOSPC;
      discard();
      throw Error(path_ + ": write failed: " + errno_text(e));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) throw Error(path_ + ": commit after the file was committed or discarded");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int e = errno;
    discard();
    throw Error(path_ + ": write failed: " + errno_text(e));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    discard();
    throw Error(path_ + ": cannot rename the temporary file into place: " + errno_text(e));
  }
  tmp_.clear();
}

void write_file_atomically(const std::string& path, std::string_view content) {
  AtomicFileWriter out(path);
  out.write(content.data(), content.size());
  out.commit();
}

void check_output_path(const std::string& path, const std::string& what) {
  std::string tmp;
  const int fd = create_temporary(path, what, tmp);
  ::close(fd);
  ::unlink(tmp.c_str());
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa{}, sb{};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

}  // namespace mixpa
