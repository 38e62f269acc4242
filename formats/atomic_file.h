// Output files appear whole or not at all: written under a temporary name in the destination's
// folder and renamed on success; removed on error, on destruction, and on SIGINT/SIGTERM.
#pragma once
#include <filesystem>
#include <string>

namespace ttq {

class AtomicOutput {
 public:
  // Checks that the destination's folder exists and is writable (input error otherwise).
  explicit AtomicOutput(std::filesystem::path destination);
  ~AtomicOutput();
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  // Where to write the content.
  const std::filesystem::path& temp_path() const { return temp_; }
  // Renames the temporary file onto the destination.
  void commit();

 private:
  std::filesystem::path destination_;
  std::filesystem::path temp_;
  bool committed_ = false;
};

// Input error unless `path` could be written (its folder exists and is writable): checked before
// long work, so that a typo does not cost a training run.
void check_writable(const std::filesystem::path& path);

// Usage error when `output` names the same file as `input` (overwriting the input while reading
// it would destroy the user's model).
void refuse_same_file(const std::filesystem::path& input, const std::filesystem::path& output);

}  // namespace ttq
