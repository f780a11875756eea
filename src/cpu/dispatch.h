// How `auto` picks the cpu executor's kernel flavour: by measurement on this machine, never by
// cpuid order alone. The first call that needs a pick times every SIMD flavour this CPU runs on
// a small synthetic problem (hot in cache, one thread, a few ms, once per process per tile
// class), and choose_flavour() - a pure function of those figures, tested with injected ones -
// takes the fastest. MIXPA_CPU_ISA=NAME forces a flavour instead.
//
// Tiles of <= 8 rows (GQA groups: the narrow kernels) and wider tiles are picked separately:
// a flavour can win one and lose the other (e.g. AMX's idle columns on a 4-row tile).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/plan.h"
#include "core/problem.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {

enum class TileClass { kWide, kNarrow };
inline constexpr int kNarrowMaxRows = 8;
inline TileClass tile_class_of_rows(int rows) { return rows <= kNarrowMaxRows ? TileClass::kNarrow : TileClass::kWide; }
const char* tile_class_name(TileClass c);  // "16-row" / "4-row": the calibration tiles

// One flavour's measured rate on a calibration problem (useful FLOPs / second).
struct FlavourRate {
  Isa isa = Isa::kScalar;
  double gflops = 0;
};

struct FlavourChoice {
  Isa isa = Isa::kScalar;
  std::string reason;  // e.g. "avx512: 350 GFLOP/s on 16-row tiles > avx512bf16 171, amx 160"
  std::vector<FlavourRate> rates;  // what was measured (empty when nothing needed measuring)
};

// Pure: the fastest of `rates` (ties: the earlier entry); rates that are not positive and
// finite are ignored; none left gives scalar. `tile` names the tiles in the reason.
FlavourChoice choose_flavour(std::span<const FlavourRate> rates, TileClass tile);

// Every flavour this CPU (and build) runs, fastest-first by cpuid order (only an order of
// listing: the pick is measured), scalar last.
std::vector<Isa> supported_isas();

// Times each flavour in `isas` on the calibration problem of `tile` (one thread; interleaved
// rounds, best round per flavour). Every flavour must be isa_supported().
std::vector<FlavourRate> calibrate(std::span<const Isa> isas, TileClass tile, int rounds = 5);

// The pick for tiles of this class: MIXPA_CPU_ISA if set (throws mixpa::Error when it names an
// unknown flavour or one this CPU cannot run); the only SIMD flavour when there is one; else
// measured once per process (thread-safe) over the SIMD flavours this CPU runs.
const FlavourChoice& auto_choice(TileClass tile);

// The flavour `auto` runs for a plan's tiles (rows = min(q_len * group, q_tile)).
Isa auto_isa_for_rows(int rows);

// What a flavour cannot compute of a (valid) problem: "" when it computes it, else the first
// feature beyond it (e.g. "F8_E4M3 caches"). scalar and avx2 compute everything validate()
// accepts (SPEC §6); the avx512 family and amx compute the origin's problems only: bf16 query
// and caches, q_len 1, head_dim 64/128/256, block_size 16/32/64/128.
std::string beyond_flavour(Isa isa, const Problem& problem);
bool flavour_computes(Isa isa, const Problem& problem);

// The flavour a call runs: auto's pick for its tiles (or MIXPA_CPU_ISA's) when that flavour
// computes the problem, else the best that does: avx2 when this CPU runs it, else scalar.
Isa isa_for(const Problem& problem, const Plan& plan);
// Why: the pick's reason, and when it could not compute the problem, which flavour ran instead,
// e.g. "avx512: ... (measured); F8_E4M3 caches: avx512 computes only bf16 ..., so avx2 runs".
std::string kernels_reason(const Problem& problem, const Plan& plan);

}  // namespace mixpa::cpu
