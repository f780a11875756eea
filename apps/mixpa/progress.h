// A progress line on stderr for work that takes over a second (generation, verification).
// Silent for quick work, and when stderr is not a terminal (a log or a pipe gets no \r lines,
// so an error is the only line there); safe to update from several threads. Left by an
// exception, it erases its line, so the error that follows starts a clean one.
#pragma once

#include <chrono>
#include <cstdio>
#include <exception>
#include <mutex>
#include <string>
#include <unistd.h>

namespace mixpa::cli {

class Progress {
 public:
  explicit Progress(std::string what)
      : what_(std::move(what)), start_(std::chrono::steady_clock::now()), enabled_(::isatty(2) == 1),
        exceptions_(std::uncaught_exceptions()) {}
  ~Progress() {
    if (std::uncaught_exceptions() > exceptions_) erase();
    finish();
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(double fraction) {
    if (!enabled_) return;
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
  void erase() {
    std::lock_guard lock(mutex_);
    if (!shown_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    shown_ = false;
  }

  std::string what_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_{};
  std::mutex mutex_;
  bool shown_ = false;
  bool enabled_;
  int exceptions_;
};

}  // namespace mixpa::cli
