// SVG swimlane of a sim run: one lane per worker of the first blocks, a rectangle per
// stage interval (cube stages blue/purple, vector stages orange/green, waits grey), a time
// axis and a legend. The default window starts at t = 0 and ends when block 0's vectors
// finish the first 8 pages of their first logical block, so the pipelining is visible page
// by page.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "io/atomic_file.h"
#include "sim/trace_output.h"

namespace mixpa::sim {
namespace {

constexpr int kDefaultPages = 8;  // the default window: the first pages of block 0's first logical block
constexpr double kWidth = 1400, kLeft = 150, kRight = 20, kTop = 60, kLane = 24, kGap = 6;

const char* colour(Stage s) {
  switch (s) {
    case Stage::kQK: return "#3b7dd8";
    case Stage::kPV: return "#8e5cc4";
    case Stage::kLoad: return "#9db4c0";
    case Stage::kSF: return "#f28e2b";
    case Stage::kUP: return "#59a14f";
    case Stage::kFinalize: return "#2a9d8f";
    case Stage::kWaitPush:
    case Stage::kWaitPop: return "url(#wait)";
    case Stage::kIdle: return "none";
  }
  return "none";
}

double window_end(const MixRuntime& rt) {
  double end = 0, all = 0;
  for (int k = 1; k <= 2; ++k)
    for (const Event& e : rt.workers()[k]->events()) {
      if (e.logical_block == 0 && e.page >= 0 && e.page < kDefaultPages) end = std::max(end, e.t1_us);
    }
  for (const auto& w : rt.workers())
    for (const Event& e : w->events()) all = std::max(all, e.t1_us);
  return end > 0 ? end : all;
}

std::string time_label(double us) {
  char buf[32];
  if (us >= 1000) std::snprintf(buf, sizeof buf, "%.2f ms", us / 1000);
  else std::snprintf(buf, sizeof buf, "%.0f us", us);
  return buf;
}

}  // namespace

void write_swimlane_svg(const MixRuntime& rt, const std::string& path, int blocks, double from_us, double to_us) {
  blocks = std::clamp(blocks, 1, rt.config().block_num);
  const double t_begin = std::max(from_us, 0.0);
  const double t_end = std::max(to_us > t_begin ? to_us : window_end(rt), t_begin + 1.0);
  const double plot_w = kWidth - kLeft - kRight;
  const int lanes = 3 * blocks;
  const double height = kTop + lanes * kLane + blocks * kGap + 90;
  auto x = [&](double t) { return kLeft + plot_w * std::clamp((t - t_begin) / (t_end - t_begin), 0.0, 1.0); };

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<defs><pattern id=\"wait\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
       "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#e6e6e6\"/>"
       "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#a0a0a0\" stroke-width=\"2\"/></pattern></defs>\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << kLeft << "\" y=\"24\" font-size=\"16\" font-weight=\"bold\">mixpa sim: MIX pipeline of blocks 0-"
    << blocks - 1 << " (cube QK/PV vs vector SF/UP), simulated time " << time_label(t_begin) << " - "
    << time_label(t_end) << "</text>\n";
  double y = kTop;
  for (int b = 0; b < blocks; ++b) {
    for (int k = 0; k < 3; ++k) {
      const auto& w = *rt.workers()[b * 3 + k];
      static const char* names[] = {"cube", "vec0", "vec1"};
      s << "<text x=\"8\" y=\"" << y + kLane * 0.65 << "\">blk " << b << ' ' << names[k] << "</text>\n";
      s << "<rect x=\"" << kLeft << "\" y=\"" << y << "\" width=\"" << plot_w << "\" height=\"" << kLane - 4
        << "\" fill=\"#fafafa\" stroke=\"#eeeeee\"/>\n";
      for (const Event& e : w.events()) {
        if (e.t0_us >= t_end || e.t1_us <= t_begin) continue;
        const double x0 = x(e.t0_us), x1 = std::max(x(e.t1_us), x0 + 0.5);
        s << "<rect x=\"" << x0 << "\" y=\"" << y << "\" width=\"" << x1 - x0 << "\" height=\"" << kLane - 4
          << "\" fill=\"" << colour(e.stage) << "\"><title>" << stage_name(e.stage);
        if (e.page >= 0) s << '[' << e.page << ']';
        if (e.pipe) s << ' ' << e.pipe << " slot " << e.slot;
        s << " lb " << e.logical_block << ": " << time_label(e.t0_us) << " - " << time_label(e.t1_us) << "</title></rect>\n";
        if (x1 - x0 > 28 && e.page >= 0 && (e.stage == Stage::kQK || e.stage == Stage::kPV || e.stage == Stage::kSF ||
                                             e.stage == Stage::kUP))
          s << "<text x=\"" << x0 + 2 << "\" y=\"" << y + kLane * 0.6 << "\" font-size=\"10\" fill=\"white\">"
            << stage_name(e.stage) << e.page << "</text>\n";
      }
      y += kLane;
    }
    y += kGap;
  }
  // Time axis.
  s << "<line x1=\"" << kLeft << "\" y1=\"" << y + 4 << "\" x2=\"" << kLeft + plot_w << "\" y2=\"" << y + 4
    << "\" stroke=\"black\"/>\n";
  for (int i = 0; i <= 10; ++i) {
    const double t = t_begin + (t_end - t_begin) * i / 10, xt = x(t);
    s << "<line x1=\"" << xt << "\" y1=\"" << y + 4 << "\" x2=\"" << xt << "\" y2=\"" << y + 10
      << "\" stroke=\"black\"/><text x=\"" << xt << "\" y=\"" << y + 24 << "\" text-anchor=\"middle\">"
      << time_label(t) << "</text>\n";
  }
  // Legend.
  const std::pair<Stage, const char*> legend[] = {{Stage::kQK, "QK (cube)"},  {Stage::kPV, "PV (cube)"},
                                                  {Stage::kLoad, "load K/V"}, {Stage::kSF, "SF (vector)"},
                                                  {Stage::kUP, "UP (vector)"}, {Stage::kWaitPop, "waiting in push/pop"}};
  double lx = kLeft;
  for (const auto& [stage, label] : legend) {
    s << "<rect x=\"" << lx << "\" y=\"" << y + 40 << "\" width=\"14\" height=\"14\" fill=\"" << colour(stage)
      << "\" stroke=\"#555\"/><text x=\"" << lx + 20 << "\" y=\"" << y + 52 << "\">" << label << "</text>\n";
    lx += 180;
  }
  s << "</svg>\n";
  write_file_atomically(path, s.str());
}

}  // namespace mixpa::sim
