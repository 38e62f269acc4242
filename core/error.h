// The one error type of ttq. Everything below cli/ reports failures by throwing it; cli/main.cpp
// maps the kind to the exit code in one place (the codes are listed in man/ttq.1).
#pragma once
#include <algorithm>
#include <stdexcept>
#include <string>

namespace ttq {

enum class ErrorKind {
  Input,    // bad file or data given by the user (exit 1)
  Runtime,  // anything that went wrong while working (exit 1)
  Usage,    // bad arguments: out-of-range values, conflicting flags (exit 2)
  Interrupted,  // SIGINT/SIGTERM honoured after writing what had to be written (exit 130)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

inline Error input_error(const std::string& m) { return Error(ErrorKind::Input, m); }
inline Error usage_error(const std::string& m) { return Error(ErrorKind::Usage, m); }
inline Error runtime_error(const std::string& m) { return Error(ErrorKind::Runtime, m); }

// The first line of `text` with anything but white space on it, trimmed; empty when none has.
inline std::string first_meaningful_line(const std::string& text) {
  constexpr const char* kSpace = " \t\r\n";
  for (size_t start = 0; start < text.size();) {
    const size_t end = std::min(text.find('\n', start), text.size());
    const size_t first = text.find_first_not_of(kSpace, start);
    if (first != std::string::npos && first < end)
      return text.substr(first, text.find_last_not_of(kSpace, end - 1) - first + 1);
    start = end + 1;
  }
  return "";
}

// One line from a LibTorch or TorchScript exception: c10 errors append C++ backtraces, the
// TorchScript interpreter puts the actual error ("RuntimeError: ...") after a traceback, and the
// TorchScript compiler starts its messages with an empty line.
inline std::string short_message(const std::string& what) {
  const auto runtime = what.rfind("RuntimeError: ");
  std::string line = first_meaningful_line(runtime != std::string::npos ? what.substr(runtime + 14) : what);
  if (line.empty()) line = first_meaningful_line(what);
  return line.empty() ? "LibTorch gave no message" : line;
}

// short_message of an error from the ttq operators, without the "ttq: " they put first for PyTorch
// users (ttq's own messages start with "ttq: error: ").
inline std::string ops_message(const std::string& what) {
  std::string line = short_message(what);
  return line.rfind("ttq: ", 0) == 0 ? line.substr(5) : line;
}

// Exit codes, documented in man/ttq.1 (EXIT STATUS).
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInterrupted = 130;

inline int exit_code(ErrorKind kind) {
  return kind == ErrorKind::Usage ? kExitUsage : kind == ErrorKind::Interrupted ? kExitInterrupted : kExitFailure;
}

}  // namespace ttq
