// mixpa: decode-phase paged attention as an SPMD MIX kernel (cube + 2 vector cores per block).
// Exit codes: 0 success, 1 verification failed, 2 invalid input or usage, 3 internal error.
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "commands.h"
#include "mixpa/error.h"
#include "mixpa/version.h"

namespace {

// The error is one line whatever it quotes (a file name, a case name): control characters
// are written as \xNN.
std::string one_line(const char* message) {
  std::string r;
  for (const char* p = message; *p; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      r += buf;
    } else {
      r += *p;
    }
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace mixpa::cli;
  CLI::App app{
      "mixpa: decode-phase paged attention, built as the origin's SPMD MIX kernel\n"
      "(1 cube + 2 vector cores per hardware block, tile pipes TPUSH/TPOP/TFREE).\n"
      "The contract (operation, variants, accuracy, invalid inputs, case files, the MIX model,\n"
      "the origin): docs/spec.md in the source tree.\n\n"
      "Examples:\n"
      "  mixpa run --case SmallCase1                 generate the origin case, run, verify vs exact fp64\n"
      "  mixpa gen --case Case1 --output case1.safetensors\n"
      "  mixpa run --input case1.safetensors --output out.safetensors --executor cpu\n",
      "mixpa"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("mixpa ") + mixpa::version());
  app.footer("\n" + executors_help() + "\n" + cases_help() +
             "\nExit codes: 0 ok, 1 verification failed, 2 invalid input or usage, 3 internal error.");
  RunArgs run_args;
  GenArgs gen_args;
  add_run_command(app, run_args);
  add_gen_command(app, gen_args);
  try {
    app.parse(argc, argv);
    if (app.got_subcommand("run")) return run_command(run_args);
    return gen_command(gen_args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "mixpa: error: %s (see mixpa --help)\n", one_line(e.what()).c_str());
    return 2;
  } catch (const mixpa::Error& e) {
    std::fprintf(stderr, "mixpa: error: %s\n", one_line(e.what()).c_str());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mixpa: error: out of memory\n");
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mixpa: internal error: %s\n", one_line(e.what()).c_str());
    return 3;
  }
}
