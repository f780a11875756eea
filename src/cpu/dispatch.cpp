// Run-time choice of the kernel flavour: cpuid decides what this CPU can run; MIXPA_CPU_ISA
// may pick a lesser one (benchmarks, debugging). Order: amx, avx512bf16, avx512, avx2, scalar.
#include <cstdlib>
#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <string>

#include "cpu/chunk_kernel.h"
#include "mixpa/error.h"

namespace mixpa::cpu {
namespace {

#if defined(MIXPA_CPU_HAS_AMX)
// AMX needs cpuid AMX-TILE + AMX-BF16 and, on Linux, a one-time permission for the tile data
// state (arch_prctl ARCH_REQ_XCOMP_PERM); without it the first tile instruction faults.
bool amx_permitted() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
    if (!tile || !bf16) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}
#endif

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAmx: return "amx";
  }
  return "?";
}

Isa parse_isa(std::string_view name) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16, Isa::kAmx})
    if (isa_name(isa) == name) return isa;
  throw Error("MIXPA_CPU_ISA: unknown instruction set '" + std::string(name) + "', expected scalar, avx2, avx512, avx512bf16 or amx");
}

bool isa_supported(Isa isa) {
  if (isa == Isa::kScalar) return true;
#if defined(__x86_64__)
  __builtin_cpu_init();
#if defined(MIXPA_CPU_HAS_AVX2)
  if (isa == Isa::kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#if defined(MIXPA_CPU_HAS_AVX512)
  if (isa == Isa::kAvx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
#if defined(MIXPA_CPU_HAS_AVX512BF16)
  if (isa == Isa::kAvx512Bf16)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#endif
#if defined(MIXPA_CPU_HAS_AMX)
  if (isa == Isa::kAmx) return isa_supported(Isa::kAvx512Bf16) && amx_permitted();
#endif
#endif
  return false;  // not built for this flavour, or not an x86-64 CPU
}

Isa default_isa() {
  if (const char* env = std::getenv("MIXPA_CPU_ISA"); env != nullptr && *env != '\0') {
    const Isa isa = parse_isa(env);
    if (!isa_supported(isa)) throw Error("MIXPA_CPU_ISA: this CPU cannot run '" + std::string(env) + "'");
    return isa;
  }
  for (Isa isa : {Isa::kAmx, Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2})
    if (isa_supported(isa)) return isa;
  return Isa::kScalar;
}

ChunkKernel chunk_kernel([[maybe_unused]] Isa isa) {
#if defined(MIXPA_CPU_HAS_AMX)
  if (isa == Isa::kAmx) return &attend_chunk_amx;
#endif
#if defined(MIXPA_CPU_HAS_AVX512BF16)
  if (isa == Isa::kAvx512Bf16) return &attend_chunk_avx512bf16;
#endif
#if defined(MIXPA_CPU_HAS_AVX512)
  if (isa == Isa::kAvx512) return &attend_chunk_avx512;
#endif
#if defined(MIXPA_CPU_HAS_AVX2)
  if (isa == Isa::kAvx2) return &attend_chunk_avx2;
#endif
  return &attend_chunk_scalar;
}

GroupKernel group_kernel([[maybe_unused]] Isa isa) {
#if defined(MIXPA_CPU_HAS_AVX512)
  if (isa == Isa::kAvx512) return &attend_group_avx512;
#endif
  return nullptr;
}

}  // namespace mixpa::cpu
