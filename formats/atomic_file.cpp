#include "formats/atomic_file.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
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
  g_has_pending.store(false);
  std::signal(SIGINT, g_previous_int);
  std::signal(SIGTERM, g_previous_term);
}

}  // namespace

namespace {

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
  temp_ = folder_of(destination_) / fmt::format(".{}.tmp-{}", destination_.filename().string(), getpid());
  set_pending(temp_);
}

AtomicOutput::~AtomicOutput() {
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(temp_, ec);
  }
  clear_pending();
}

void AtomicOutput::commit() {
  std::error_code ec;
  std::filesystem::rename(temp_, destination_, ec);
  if (ec)
    throw runtime_error(fmt::format("cannot write {}: {}", destination_.string(), ec.message()));
  committed_ = true;
  clear_pending();
}

void refuse_same_file(const std::filesystem::path& input, const std::filesystem::path& output) {
  std::error_code ec;
  if (std::filesystem::equivalent(input, output, ec))
    throw usage_error(fmt::format("output {} is the input file; choose another name", output.string()));
}

}  // namespace ttq
