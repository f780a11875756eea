// Run-time choice of the kernel flavour: cpuid decides what this CPU can run; MIXPA_CPU_ISA
// may pick a lesser one (benchmarks, debugging).
#include <cstdlib>
#include <string>

#include "cpu/chunk_kernel.h"
#include "mixpa/error.h"

namespace mixpa::cpu {

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512Bf16: return "avx512bf16";
  }
  return "?";
}

Isa parse_isa(std::string_view name) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Bf16})
    if (isa_name(isa) == name) return isa;
  throw Error("MIXPA_CPU_ISA: unknown instruction set '" + std::string(name) + "', expected scalar, avx2 or avx512bf16");
}

bool isa_supported(Isa isa) {
  if (isa == Isa::kScalar) return true;
#if defined(__x86_64__)
  __builtin_cpu_init();
#if defined(MIXPA_CPU_HAS_AVX2)
  if (isa == Isa::kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#if defined(MIXPA_CPU_HAS_AVX512BF16)
  if (isa == Isa::kAvx512Bf16)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
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
  for (Isa isa : {Isa::kAvx512Bf16, Isa::kAvx2})
    if (isa_supported(isa)) return isa;
  return Isa::kScalar;
}

ChunkKernel chunk_kernel([[maybe_unused]] Isa isa) {
#if defined(MIXPA_CPU_HAS_AVX512BF16)
  if (isa == Isa::kAvx512Bf16) return &attend_chunk_avx512bf16;
#endif
#if defined(MIXPA_CPU_HAS_AVX2)
  if (isa == Isa::kAvx2) return &attend_chunk_avx2;
#endif
  return &attend_chunk_scalar;
}

}  // namespace mixpa::cpu
