// The calibration's per-machine record: `auto` measures the flavours once per machine, not once
// per process, so every process on one machine makes the same pick where two flavours measure
// close (the same command gives the same bits) and later processes skip the measurement.
//
// A small text file, one line per tile class under a key naming the machine and the build:
//
//   # mixpa cpu calibration (docs/cpu.md): delete it to measure again
//   key AMD EPYC | family 25 model 17 stepping 1 | avx512bf16 avx512 avx2 | mixpa 0.6.0 | method 2
//   16-row avx512bf16 90.1 avx512 84.2 avx2 79.0
//   4-row avx512 34.0 avx512bf16 29.1 avx2 28.0
//
// A file whose key differs (another CPU, a VM that hides other flags, another mixpa version or
// calibration method) is ignored and replaced; a malformed or incomplete line is ignored (the class is measured).
// Where: MIXPA_CALIBRATION_CACHE (a file path; "off" for none), else
// $XDG_CACHE_HOME/mixpa/calibration.txt, else $HOME/.cache/mixpa/calibration.txt.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cpu/dispatch.h"

namespace mixpa::cpu {

// How calibrate() measures; raised whenever that changes, so rates recorded the old way are
// measured again (2: each timed run follows an untimed run of the same flavour).
inline constexpr int kCalibrationMethod = 2;

// This machine and build: cpuid's brand string, family / model / stepping, the SIMD flavours it
// runs (`simd`, in order), mixpa's version and the calibration method. One line.
std::string machine_key(std::span<const Isa> simd);

// The cache file's path, or "" when there is none (MIXPA_CALIBRATION_CACHE=off, or no
// XDG_CACHE_HOME and no HOME).
std::string calibration_cache_path();

// Pure: the rates of `tile` recorded in a file's `text` under `key`, when the line names exactly
// the flavours `simd` (in any order) with a positive finite rate each; else nullopt.
std::optional<std::vector<FlavourRate>> find_rates(std::string_view text, std::string_view key, TileClass tile,
                                                   std::span<const Isa> simd);
// Pure: `text` with the line of `tile` set to `rates`; a text under another key (or none)
// becomes a new file holding this key and line only.
std::string with_rates(std::string_view text, std::string_view key, TileClass tile, std::span<const FlavourRate> rates);

// The file's text ("" when it cannot be read).
std::string read_cache(const std::string& path);
// Writes `text` to `path` whole (a temporary file in the same directory, then rename: a reader
// never sees half a file), creating the directory; false when it cannot (nothing is thrown).
bool write_cache(const std::string& path, const std::string& text);

}  // namespace mixpa::cpu
