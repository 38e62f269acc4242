#include "formats/atomic_file.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

#include "core/error.h"

namespace ttq {
namespace {

// The temporary file a signal handler must remove; one output is written at a time.
char g_pending_temp[4096];
std::atomic<bool> g_has_pending{false};

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
  std::signal(SIGINT, remove_pending_and_reraise);
  std::signal(SIGTERM, remove_pending_and_reraise);
}

void clear_pending() {
  g_has_pending.store(false);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

}  // namespace

AtomicOutput::AtomicOutput(std::filesystem::path destination) : destination_(std::move(destination)) {
  namespace fs = std::filesystem;
  const fs::path folder = destination_.has_parent_path() ? destination_.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    throw input_error(fmt::format("cannot write {}: folder {} does not exist", destination_.string(),
                                  folder.string()));
  if (fs::is_directory(destination_, ec))
    throw input_error(fmt::format("cannot write {}: it is a folder", destination_.string()));
  if (access(folder.c_str(), W_OK) != 0)
    throw input_error(fmt::format("cannot write {}: folder {} is not writable",
                                  destination_.string(), folder.string()));
  temp_ = folder / fmt::format(".{}.tmp-{}", destination_.filename().string(), getpid());
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
