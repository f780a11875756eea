// How `auto` picks the cpu executor's kernel flavour: by measurement on this machine, never by
// cpuid order alone. The first call that needs a pick times every SIMD flavour this CPU runs on
// a small synthetic problem whose K/V lines are flushed from the caches before each timed run
// (read from memory, as a decode step reads each layer's KV; one thread, 4-10 ms per tile class,
// once per process), and choose_flavour() - a pure function of those figures, tested with injected ones -
// takes the fastest. MIXPA_CPU_ISA=NAME forces a flavour instead.
//
// Tiles of <= 8 rows (GQA groups: the narrow kernels), of 9-16 rows and of 64 rows (the plan's
// large q_tile: 64 or more query rows per kv head) are picked separately: a flavour can win one
// and lose another (AMX's idle columns on a 4-row tile; on a Zen 4, avx512bf16 is 1.4x faster
// than avx512 on Case2's 64-row tiles and level with it on Case1's 16-row ones).
#pragma once

#include <array>
#include <span>
#include <string>
#include <vector>

#include "core/plan.h"
#include "core/problem.h"
#include "cpu/chunk_kernel.h"

namespace mixpa::cpu {

enum class TileClass { kWide, kNarrow, kTall };
inline constexpr std::array<TileClass, 3> kTileClasses = {TileClass::kWide, TileClass::kNarrow, TileClass::kTall};
inline constexpr int kNarrowMaxRows = 8;
inline TileClass tile_class_of_rows(int rows) {
  return rows <= kNarrowMaxRows ? TileClass::kNarrow : rows <= kSmallQTile ? TileClass::kWide : TileClass::kTall;
}
const char* tile_class_name(TileClass c);  // "16-row" / "4-row" / "64-row": the calibration tiles

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

// Times each flavour in `isas` on the calibration problem of `tile` (one thread; K/V flushed
// from the caches before each run; interleaved rounds, best round per flavour). Every flavour
// must be isa_supported().
std::vector<FlavourRate> calibrate(std::span<const Isa> isas, TileClass tile, int rounds = 5);

// The pick for tiles of this class: MIXPA_CPU_ISA if set (throws mixpa::Error when it names an
// unknown flavour or one this CPU cannot run); the only SIMD flavour when there is one; else
// measured once per process (thread-safe) over the SIMD flavours this CPU runs.
const FlavourChoice& auto_choice(TileClass tile);

// The flavour `auto` runs for a plan's tiles (rows = min(q_len * group, q_tile)).
Isa auto_isa_for_rows(int rows);

// What a flavour cannot compute of a (valid) problem: "" when it computes it, else the first
// feature beyond it (e.g. "F8_E4M3 caches"). scalar and avx2 compute everything validate()
// accepts (SPEC §6); amx computes the origin's problems only (bf16 query and caches, q_len 1,
// head_dim 64/128/256, block_size 16/32/64/128), avx512bf16 those at q_len 1..16, avx512 also
// f16 / fp8 caches and f16 queries.
std::string beyond_flavour(Isa isa, const Problem& problem);
bool flavour_computes(Isa isa, const Problem& problem);

// The flavour a call runs: auto's pick for its tiles (or MIXPA_CPU_ISA's) when that flavour
// computes the problem, else the best that does: avx512 where it computes it, else avx2 when
// this CPU runs it, else scalar.
Isa isa_for(const Problem& problem, const Plan& plan);
// Why: the pick's reason, and when it could not compute the problem, which flavour ran instead,
// e.g. "avx512: ... (measured); F8_E4M3 caches: avx512 computes only bf16 ..., so avx2 runs".
std::string kernels_reason(const Problem& problem, const Plan& plan);

}  // namespace mixpa::cpu
