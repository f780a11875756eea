// Checks of CLI arguments that CLI11 cannot express: seeds without silent wrap-around, and
// output files refused before any work (unwritable, a directory, the input itself).
#include <charconv>
#include <limits>

#include "commands.h"
#include "io/atomic_file.h"
#include "mixpa/error.h"

namespace mixpa::cli {

std::uint64_t parse_seed(const std::string& text) {
  std::uint64_t value = 0;
  const char* end = text.data() + text.size();
  const auto r = std::from_chars(text.data(), end, value);  // no sign, no wrap: "-1" and 2^64 fail
  if (text.empty() || r.ec != std::errc{} || r.ptr != end)
    throw Error("--seed: '" + text + "' is not an integer in [0, " +
                std::to_string(std::numeric_limits<std::uint64_t>::max()) + "]");
  return value;
}

void check_outputs(const std::vector<std::pair<std::string, std::string>>& outputs, const std::string& input) {
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const auto& [option, path] = outputs[i];
    if (path.empty()) continue;
    if (!input.empty() && same_file(path, input))
      throw Error(option + " " + path + ": is the same file as --input " + input + " (refusing to replace the input)");
    for (std::size_t j = 0; j < i; ++j)
      if (!outputs[j].second.empty() && (outputs[j].second == path || same_file(outputs[j].second, path)))
        throw Error(option + " " + path + ": is the same file as " + outputs[j].first + " " + outputs[j].second);
    check_output_path(path, option);
  }
}

}  // namespace mixpa::cli
