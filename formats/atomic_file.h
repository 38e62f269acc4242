// Output files appear whole or not at all (as ccache's AtomicFile): written under a unique
// temporary name in the destination's folder and renamed on success; removed on error, on
// destruction, and on SIGINT/SIGTERM.
#pragma once
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

namespace ttq {

class AtomicOutput {
 public:
  // Checks that the destination's folder exists and is writable (input error otherwise), then
  // creates the temporary file (mkstemp: unique even for concurrent writers).
  explicit AtomicOutput(std::filesystem::path destination);
  ~AtomicOutput();
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  // Where to write the content.
  std::ostream& stream() { return stream_; }
  // Flushes and checks the stream, then renames the temporary file onto the destination. A
  // runtime error naming the destination and the cause (a full disk, say) when any write failed.
  void commit();
  // The one-line error for a failure while writing: the stream's error when it has one (that is
  // the cause), else `detail`.
  std::string failure(const std::string& detail) const;

 private:
  std::filesystem::path destination_;
  std::filesystem::path temp_;
  std::ofstream stream_;
  bool committed_ = false;
};

// The usual use: `write` fills the stream; then commit. An exception from `write` (LibTorch's
// serializers throw when their stream fails) becomes one runtime error naming `destination`.
void write_atomically(const std::filesystem::path& destination, const std::function<void(std::ostream&)>& write);

// Input error unless `path` could be written (its folder exists and is writable): checked before
// long work, so that a typo does not cost a training run.
void check_writable(const std::filesystem::path& path);

// Usage error when `output` names the same file as `input` (overwriting the input while reading
// it would destroy the user's model).
void refuse_same_file(const std::filesystem::path& input, const std::filesystem::path& output);

}  // namespace ttq
