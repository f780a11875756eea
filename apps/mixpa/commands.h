// The CLI's subcommands: each registers its options on a CLI11 app and runs from a struct.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mixpa/paged_attention.h"

namespace mixpa::cli {

struct RunArgs {
  std::string input, output, case_name, executor = "auto";
  std::uint64_t seed = 0;
  std::optional<double> scale, softcap;
  std::optional<std::int64_t> window_left;
  std::string kv_layout;
  bool no_verify = false, verify = false;
  int repeat = 1;
  std::vector<double> swimlane_window;
  std::string schedule;    // sim: threads, turns, random
  int schedule_seeds = 0;  // sim: compare this many random schedules
  Options options;
};

struct GenArgs {
  std::string case_name, output;
  std::uint64_t seed = 0;
};

void add_run_command(CLI::App& app, RunArgs& args);
void add_gen_command(CLI::App& app, GenArgs& args);

// Return the process exit code: 0 ok, 1 verification failed. Throw mixpa::Error on bad input.
int run_command(RunArgs& args);
int gen_command(const GenArgs& args);

std::string executors_help();
std::string cases_help();

}  // namespace mixpa::cli
