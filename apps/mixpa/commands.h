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
  std::string seed = "0";  // parsed by parse_seed(): CLI11 would wrap "-1" and 2^64 silently
  std::optional<double> scale, softcap, k_scale, v_scale;
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
  std::string seed = "0";
  // SPEC §6 on top of the named case (empty / unset = the case's own).
  std::string kv_dtype, query_dtype;
  std::optional<std::int64_t> q_len;
  std::optional<double> k_scale, v_scale;
  bool int64_indices = false;
};

// A --seed value: a decimal integer in [0, 2^64 - 1]; throws mixpa::Error otherwise.
std::uint64_t parse_seed(const std::string& text);

// Refuses, before any work, output files that cannot be written (a directory, a missing or
// read-only directory) or that are the same file as the input or as each other.
// `outputs`: (option name, path) pairs, empty paths skipped; `input` may be empty.
void check_outputs(const std::vector<std::pair<std::string, std::string>>& outputs, const std::string& input);

void add_run_command(CLI::App& app, RunArgs& args);
void add_gen_command(CLI::App& app, GenArgs& args);

// Return the process exit code: 0 ok, 1 verification failed. Throw mixpa::Error on bad input.
int run_command(RunArgs& args);
int gen_command(const GenArgs& args);

std::string executors_help();
std::string cases_help();

}  // namespace mixpa::cli
