// Writing a whole file so that readers never see a partial one: write beside the target,
// then rename. On failure nothing is left behind and mixpa::Error names the path.
#pragma once

#include <string>

namespace mixpa {

void write_file_atomically(const std::string& path, const std::string& content);

}  // namespace mixpa
