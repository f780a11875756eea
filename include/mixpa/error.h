// The one error type for invalid input: its message names the input and the rule.
#pragma once

#include <stdexcept>
#include <string>

namespace mixpa {

// Thrown for anything the caller can fix: bad shapes, dtypes, page ids, files, options.
// The CLI prints what() on one line and exits 2; Python raises ValueError with the same text.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Thrown by run() when Options::cancelled asked it to stop (e.g. Ctrl-C in Python).
class Interrupted : public Error {
 public:
  Interrupted() : Error("interrupted") {}
};

}  // namespace mixpa
