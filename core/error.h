// The one error type of ttq. Everything below cli/ reports failures by throwing it; cli/main.cpp
// maps the kind to the exit code in one place (the codes are listed in man/ttq.1).
#pragma once
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

// One line from a LibTorch or TorchScript exception: c10 errors append C++ backtraces, and the
// TorchScript interpreter puts the actual error ("RuntimeError: ...") after a traceback.
inline std::string short_message(const std::string& what) {
  const auto runtime = what.rfind("RuntimeError: ");
  std::string line = runtime != std::string::npos ? what.substr(runtime + 14) : what;
  line = line.substr(0, line.find('\n'));
  return line.empty() ? what.substr(0, what.find('\n')) : line;
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
