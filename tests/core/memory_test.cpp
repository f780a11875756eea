// HugePageAllocator (include/mixpa/memory.h): alignment, sizes on both sides of the huge-page
// threshold, and the generated cases' KV buffers on it.
#include "mixpa/memory.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "core/cases.h"

namespace mixpa {
namespace {

std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

TEST(HugePageAllocator, SmallBuffersAreCacheLineAligned) {
  for (std::size_t n : {std::size_t{1}, std::size_t{63}, std::size_t{4096}, kHugePageMinBytes / 2 - 1}) {
    KvVector v(n, bf16::from_float(1.5f));
    EXPECT_EQ(address(v.data()) % 64, 0u) << n;
    EXPECT_EQ(v.back().to_float(), 1.5f);
  }
}

TEST(HugePageAllocator, LargeBuffersAreHugePageAligned) {
  const std::size_t n = kHugePageMinBytes / 2 * 3 + 7;  // 6 MiB + 14 bytes of bf16
  KvVector v(n);
  EXPECT_EQ(address(v.data()) % kHugePageBytes, 0u);
  for (std::size_t i = 0; i < n; i += 4096) v[i] = bf16::from_float(static_cast<float>(i % 251));
  v[n - 1] = bf16::from_float(3.0f);
  KvVector copy = v;  // copies allocate through the allocator too
  EXPECT_EQ(address(copy.data()) % kHugePageBytes, 0u);
  EXPECT_EQ(0, std::memcmp(copy.data(), v.data(), n * sizeof(bf16)));
}

TEST(HugePageAllocator, ZeroAndOverflowingSizes) {
  HugePageAllocator<bf16> a;
  bf16* p = a.allocate(0);
  EXPECT_NE(p, nullptr);
  a.deallocate(p, 0);
  EXPECT_THROW((void)a.allocate(static_cast<std::size_t>(-1) / 2 + 1), std::bad_array_new_length);  // n * 2 overflows
}

TEST(HugePageAllocator, GeneratedKvCachesUseIt) {
  CaseSpec spec = find_case("SmallCase1");
  spec.batch = 2;  // 2 x 64 pages x 32 KiB = 4 MiB per cache
  const Case c = generate_case(spec, 3);
  ASSERT_GE(c.key_cache.size() * sizeof(bf16), kHugePageMinBytes);
  EXPECT_EQ(address(c.key_cache.data()) % kHugePageBytes, 0u);
  EXPECT_EQ(address(c.value_cache.data()) % kHugePageBytes, 0u);
}

}  // namespace
}  // namespace mixpa
