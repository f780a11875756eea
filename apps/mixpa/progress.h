// A progress line on stderr for work that takes over a second (generation, verification).
// Silent for quick work; safe to update from several threads.
#pragma once

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>

namespace mixpa::cli {

class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), start_(std::chrono::steady_clock::now()) {}
  ~Progress() { finish(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(double fraction) {
    std::lock_guard lock(mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (now - start_ < std::chrono::seconds(1) || now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    shown_ = true;
    std::fprintf(stderr, "\r%s: %3d%%", what_.c_str(), static_cast<int>(fraction * 100));
    std::fflush(stderr);
  }

  void finish() {
    std::lock_guard lock(mutex_);
    if (!shown_) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "\r%s: done in %.1f s\n", what_.c_str(), s);
    shown_ = false;
  }

 private:
  std::string what_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_{};
  std::mutex mutex_;
  bool shown_ = false;
};

}  // namespace mixpa::cli
