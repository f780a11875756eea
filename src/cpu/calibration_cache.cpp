// The calibration's per-machine record (calibration_cache.h).
#include "cpu/calibration_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <unistd.h>

#include "mixpa/version.h"

namespace mixpa::cpu {
namespace {

constexpr std::string_view kHeader = "# mixpa cpu calibration (docs/cpu.md): delete it to measure again";
constexpr std::string_view kKey = "key ";

std::string cpu_identity() {
#if defined(__x86_64__)
  unsigned regs[12] = {};
  std::string brand;
  unsigned top = 0, b = 0, c = 0, d = 0;
  __cpuid(0x80000000u, top, b, c, d);
  if (top >= 0x80000004u) {
    for (unsigned leaf = 0; leaf < 3; ++leaf)
      __cpuid(0x80000002u + leaf, regs[4 * leaf], regs[4 * leaf + 1], regs[4 * leaf + 2], regs[4 * leaf + 3]);
    brand.assign(reinterpret_cast<const char*>(regs), sizeof regs);
    brand.erase(std::find(brand.begin(), brand.end(), '\0'), brand.end());
    std::replace_if(brand.begin(), brand.end(), [](char ch) { return ch == '\n' || ch == '\r' || ch == '|'; }, ' ');
    brand.erase(0, brand.find_first_not_of(' '));
    brand.erase(brand.find_last_not_of(' ') + 1);
  }
  unsigned a = 0;
  __cpuid(1, a, b, c, d);
  const unsigned family = ((a >> 8) & 0xf) + ((a >> 8 & 0xf) == 0xf ? (a >> 20) & 0xff : 0);
  const unsigned model = ((a >> 4) & 0xf) | ((a >> 12) & 0xf0);
  return (brand.empty() ? std::string("x86-64") : brand) + " | family " + std::to_string(family) + " model " +
         std::to_string(model) + " stepping " + std::to_string(a & 0xf);
#else
  return "not x86-64";
#endif
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

// The rest of `line` after `prefix`, or nullopt.
std::optional<std::string_view> after(std::string_view line, std::string_view prefix) {
  if (line.substr(0, prefix.size()) != prefix) return std::nullopt;
  return line.substr(prefix.size());
}

std::vector<std::string_view> lines_of(std::string_view text) {
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    lines.push_back(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
  }
  return lines;
}

bool key_matches(const std::vector<std::string_view>& lines, std::string_view key) {
  for (std::string_view line : lines)
    if (const auto k = after(line, kKey)) return *k == key;
  return false;
}

}  // namespace

std::string machine_key(std::span<const Isa> simd) {
  std::string flavours;
  for (Isa isa : simd) flavours += (flavours.empty() ? "" : " ") + std::string(isa_name(isa));
  return cpu_identity() + " | " + (flavours.empty() ? "none" : flavours) + " | mixpa " + version() + " | method " +
         std::to_string(kCalibrationMethod);
}

std::string calibration_cache_path() {
  if (const char* p = env("MIXPA_CALIBRATION_CACHE")) return std::string_view(p) == "off" ? std::string() : p;
  if (const char* x = env("XDG_CACHE_HOME")) return std::string(x) + "/mixpa/calibration.txt";
  if (const char* h = env("HOME")) return std::string(h) + "/.cache/mixpa/calibration.txt";
  return {};
}

std::optional<std::vector<FlavourRate>> find_rates(std::string_view text, std::string_view key, TileClass tile,
                                                   std::span<const Isa> simd) {
  const std::vector<std::string_view> lines = lines_of(text);
  if (!key_matches(lines, key)) return std::nullopt;
  for (std::string_view line : lines) {
    const auto rest = after(line, std::string(tile_class_name(tile)) + " ");
    if (!rest) continue;
    std::istringstream in{std::string(*rest)};
    std::vector<FlavourRate> rates;
    std::string name;
    double gflops = 0;
    while (in >> name >> gflops) {
      const auto known = std::find_if(simd.begin(), simd.end(), [&](Isa isa) { return isa_name(isa) == name; });
      if (known == simd.end() || !std::isfinite(gflops) || gflops <= 0) return std::nullopt;
      if (std::any_of(rates.begin(), rates.end(), [&](const FlavourRate& r) { return r.isa == *known; })) return std::nullopt;
      rates.push_back({*known, gflops});
    }
    if (!in.eof() || rates.size() != simd.size()) return std::nullopt;
    return rates;
  }
  return std::nullopt;
}

std::string with_rates(std::string_view text, std::string_view key, TileClass tile, std::span<const FlavourRate> rates) {
  std::vector<std::string_view> lines = lines_of(text);
  if (!key_matches(lines, key)) lines.clear();
  const std::string prefix = std::string(tile_class_name(tile)) + " ";
  std::string line = prefix.substr(0, prefix.size() - 1);
  for (const FlavourRate& r : rates) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " %.1f", r.gflops);
    line += " " + std::string(isa_name(r.isa)) + buf;
  }
  std::string out = std::string(kHeader) + "\n" + std::string(kKey) + std::string(key) + "\n";
  for (std::string_view l : lines)
    if (!l.empty() && l != kHeader && !after(l, kKey) && !after(l, prefix)) out += std::string(l) + "\n";
  return out + line + "\n";
}

std::string read_cache(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  if (text.size() > (1 << 16)) return {};  // not ours
  return text;
}

bool write_cache(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return false;
    out << text;
    out.close();
    if (!out) {
      fs::remove(tmp, ec);
      return false;
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return false;
  }
  return true;
}

}  // namespace mixpa::cpu
