// Host memory for KV caches: large buffers backed by transparent huge pages.
//
// A paged-attention kernel reads its KV pages in block-table order, i.e. at random over the
// cache, a few KiB per page. With 4 KiB pages nearly every page of KV rows costs a TLB miss and
// a page walk; under a hypervisor (nested paging) a walk costs several memory accesses. On the
// 2-vCPU KVM machine mixpa is developed on, Decode32k (134 MB of KV) ran 16-19% faster from
// 2 MiB pages (`bench/mixpa_bench` allocates its cases this way; docs/cpu.md has the figures).
//
// HugePageAllocator gives buffers of at least kHugePageMinBytes 2 MiB-aligned, and asks Linux
// for transparent huge pages (madvise MADV_HUGEPAGE) *before* the memory is first touched, which
// is what the common THP setting "madvise" needs. Elsewhere, or for small buffers, it is the
// plain aligned operator new. Use it for KV caches you allocate yourself:
//
//     std::vector<mixpa::bf16, mixpa::HugePageAllocator<mixpa::bf16>> key_cache(n);
#pragma once

#include <cstddef>
#include <new>
#include <vector>

#include "mixpa/dtype.h"

namespace mixpa {

inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;
inline constexpr std::size_t kHugePageMinBytes = std::size_t{4} << 20;

// Raw allocation behind HugePageAllocator (throws std::bad_alloc); free with the same size.
void* allocate_huge(std::size_t bytes);
void deallocate_huge(void* p, std::size_t bytes) noexcept;

template <class T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() noexcept = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(allocate_huge(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { deallocate_huge(p, n * sizeof(T)); }

  template <class U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const HugePageAllocator<U>&) const noexcept {  // C++17 has no rewritten !=
    return false;
  }
};

// The KV cache buffers mixpa allocates itself (generated cases, case files, the benchmark).
using KvVector = std::vector<bf16, HugePageAllocator<bf16>>;
// The same for caches of other dtypes (f16, e4m3, e5m2 elements as raw bytes).
using KvBytes = std::vector<std::uint8_t, HugePageAllocator<std::uint8_t>>;

}  // namespace mixpa
