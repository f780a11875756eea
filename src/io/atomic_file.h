// Writing a whole file so that readers never see a partial one: the bytes go to a temporary
// beside the target, which is then renamed over it. The temporary is created exclusively
// (O_CREAT | O_EXCL | O_NOFOLLOW) under a unique random name, so it is never an existing file
// or a planted symlink, and concurrent writers of one path (threads or processes) never share
// one: the target always ends up as one writer's complete file. A symlink at the target itself
// is replaced, not followed. On failure nothing is left behind and mixpa::Error names the path.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace mixpa {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);  // creates the temporary
  ~AtomicFileWriter();                           // removes the temporary unless committed
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t size);
  void commit();  // closes the temporary and renames it over the target

 private:
  void discard() noexcept;
  std::string path_, tmp_;
  int fd_ = -1;
};

void write_file_atomically(const std::string& path, std::string_view content);

// Checks before any work that `path` can be written by write_file_atomically: it is not a
// directory and a temporary can be created beside it (one is created and removed). Throws
// mixpa::Error naming `what` (e.g. "--output") and the path.
void check_output_path(const std::string& path, const std::string& what);

// Whether two existing paths name the same file (same device and inode; links followed).
bool same_file(const std::string& a, const std::string& b);

}  // namespace mixpa
