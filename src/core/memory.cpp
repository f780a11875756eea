// Huge-page-backed host buffers (include/mixpa/memory.h).
#include "mixpa/memory.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mixpa {
namespace {

constexpr std::align_val_t kSmallAlign{64};

}  // namespace

// Aligned operator new, so sanitizers keep their bounds checks on these buffers; the madvise
// only asks the kernel to back the (still untouched) range with 2 MiB pages when it is first
// written. It is advice: where THP is off it fails and the buffer keeps 4 KiB pages.
void* allocate_huge(std::size_t bytes) {
  if (bytes < kHugePageMinBytes) return ::operator new(bytes == 0 ? 1 : bytes, kSmallAlign);
  void* p = ::operator new(bytes, std::align_val_t{kHugePageBytes});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  (void)madvise(p, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
#endif
  return p;
}

void deallocate_huge(void* p, std::size_t bytes) noexcept {
  if (bytes < kHugePageMinBytes) {
    ::operator delete(p, kSmallAlign);
  } else {
    ::operator delete(p, std::align_val_t{kHugePageBytes});
  }
}

}  // namespace mixpa
