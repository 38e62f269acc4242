// Output files appear whole or not at all (as ccache's AtomicFile): written under a unique
// temporary name in the destination's folder and renamed on success; removed on error, on
// destruction, and on SIGINT/SIGTERM.
#pragma once
#include <filesystem>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace ttq {

// A stream buffer over a file descriptor that never reports a failed write to its stream: it
// records the first error (ENOSPC, EFBIG) and drops the rest. LibTorch's zip writer aborts the
// process when its stream fails mid-record (its destructor throws again), so the failure must only
// surface when the caller commits.
class RecordingFileBuf : public std::streambuf {
 public:
  explicit RecordingFileBuf(int fd) : fd_(fd), buffer_(1 << 16) { setp(buffer_.data(), buffer_.data() + buffer_.size()); }
  ~RecordingFileBuf() override;
  int error() const { return error_; }  // errno of the first failed write, 0 if none
  bool finish();                        // flushes and closes; false when any write failed

 protected:
  int_type overflow(int_type c) override;
  std::streamsize xsputn(const char* s, std::streamsize n) override;
  int sync() override;

 private:
  void drain(const char* data, size_t size);
  int fd_;
  int error_ = 0;
  std::vector<char> buffer_;
};

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
  // The one-line error for a failure while writing: the file's error when it has one (that is
  // the cause), else `detail`.
  std::string failure(const std::string& detail) const;

 private:
  std::filesystem::path destination_;
  std::filesystem::path temp_;
  std::unique_ptr<RecordingFileBuf> file_;
  std::ostream stream_{nullptr};
  bool committed_ = false;
};

// An exclusive flock(2) on `path` (a folder, or a file created if missing) for the object's life: two ttq runs must not
// write one run log or one checkpoint folder. An input error naming `what` ("the log run.jsonl")
// when another process holds it.
class FileLock {
 public:
  FileLock(const std::filesystem::path& path, const std::string& what);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// Removes the output file being written, if any. Async-signal-safe: for the interrupt handler.
void remove_pending_output();

// The usual use: `write` fills the stream; then commit. An exception from `write` (LibTorch's
// serializers throw when their stream fails) becomes one runtime error naming `destination`.
void write_atomically(const std::filesystem::path& destination, const std::function<void(std::ostream&)>& write);

// Input error unless `path` could be written (its folder exists and is writable): checked before
// long work, so that a typo does not cost a training run.
void check_writable(const std::filesystem::path& path);

// Usage error when `output` names the same file as `input` (overwriting the input while reading
// it would destroy the user's model).
void refuse_same_file(const std::filesystem::path& input, const std::filesystem::path& output);

// A path given on the command line, with what it is for the messages ("--log", "the model").
struct NamedPath {
  std::string what;
  std::filesystem::path path;
};
// Usage error naming both when an output is one of the inputs or another output: the same file by
// device and inode when both exist, else by canonical path. Empty paths are skipped.
void refuse_overlaps(const std::vector<NamedPath>& inputs, const std::vector<NamedPath>& outputs);

}  // namespace ttq
