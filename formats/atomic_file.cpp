#include "formats/atomic_file.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace ttq {
namespace {

// The temporary file a signal handler must remove; one output is written at a time. A signal
// while it is written removes it and ends the process (the half-written file is worth nothing).
char g_pending_temp[4096];
std::atomic<bool> g_has_pending{false};
void (*g_previous_int)(int) = SIG_DFL;
void (*g_previous_term)(int) = SIG_DFL;

extern "C" void remove_pending_and_reraise(int sig) {
  if (g_has_pending.load()) unlink(g_pending_temp);  // async-signal-safe
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void set_pending(const std::filesystem::path& p) {
  const std::string s = p.string();
  if (s.size() >= sizeof(g_pending_temp)) return;
  std::memcpy(g_pending_temp, s.c_str(), s.size() + 1);
  g_has_pending.store(true);
  g_previous_int = std::signal(SIGINT, remove_pending_and_reraise);
  g_previous_term = std::signal(SIGTERM, remove_pending_and_reraise);
}

// Puts back whatever handlers were there (finetune's graceful-stop handler, say).
void clear_pending() {
  if (!g_has_pending.exchange(false)) return;
  std::signal(SIGINT, g_previous_int);
  std::signal(SIGTERM, g_previous_term);
}

std::filesystem::path folder_of(const std::filesystem::path& p) {
  return p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
}

}  // namespace

void check_writable(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  const fs::path folder = folder_of(path);
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    throw input_error(fmt::format("cannot write {}: folder {} does not exist", path.string(), folder.string()));
  if (fs::is_directory(path, ec)) throw input_error(fmt::format("cannot write {}: it is a folder", path.string()));
  if (access(folder.c_str(), W_OK) != 0)
    throw input_error(fmt::format("cannot write {}: folder {} is not writable", path.string(), folder.string()));
}

AtomicOutput::AtomicOutput(std::filesystem::path destination) : destination_(std::move(destination)) {
  check_writable(destination_);
  std::string pattern = (folder_of(destination_) / fmt::format(".{}.tmp-XXXXXX", destination_.filename().string())).string();
  const int fd = mkstemp(pattern.data());
  if (fd < 0)
    throw input_error(fmt::format("cannot write {}: {}", destination_.string(), std::strerror(errno)));
  close(fd);
  temp_ = pattern;
  set_pending(temp_);
  stream_.open(temp_, std::ios::binary | std::ios::trunc);
  if (!stream_) throw input_error(fmt::format("cannot write {}: {}", destination_.string(), std::strerror(errno)));
}

AtomicOutput::~AtomicOutput() {
  if (!committed_) {
    stream_.close();
    std::error_code ec;
    std::filesystem::remove(temp_, ec);
  }
  clear_pending();
}

std::string AtomicOutput::failure(const std::string& detail) const {
  // After a failed write the stream is bad and errno still holds the write's cause (ENOSPC, EFBIG).
  const int cause = stream_.fail() ? errno : 0;
  return fmt::format("cannot write {}: {}", destination_.string(), cause ? std::strerror(cause) : detail);
}

void AtomicOutput::commit() {
  errno = 0;
  stream_.flush();
  if (stream_.good()) stream_.close();
  if (stream_.fail()) throw runtime_error(failure("write failed"));
  std::error_code ec;
  std::filesystem::rename(temp_, destination_, ec);
  if (ec) throw runtime_error(failure(ec.message()));
  committed_ = true;
  clear_pending();
}

void write_atomically(const std::filesystem::path& destination, const std::function<void(std::ostream&)>& write) {
  AtomicOutput out(destination);
  try {
    errno = 0;
    write(out.stream());
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw runtime_error(out.failure(short_message(e.what_without_backtrace())));
  } catch (const std::exception& e) {
    throw runtime_error(out.failure(short_message(e.what())));
  }
  out.commit();
}

void refuse_same_file(const std::filesystem::path& input, const std::filesystem::path& output) {
  std::error_code ec;
  if (std::filesystem::equivalent(input, output, ec))
    throw usage_error(fmt::format("output {} is the input file; choose another name", output.string()));
}

}  // namespace ttq
