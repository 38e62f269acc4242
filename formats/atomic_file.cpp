#include "formats/atomic_file.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <unistd.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <random>
#include <regex>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace ttq {
namespace {

// The temporary file an interrupt must remove; one output is written at a time.
char g_pending_temp[4096];
std::atomic<bool> g_has_pending{false};

void set_pending(const std::filesystem::path& p) {
  const std::string s = p.string();
  if (s.size() >= sizeof(g_pending_temp)) return;
  std::memcpy(g_pending_temp, s.c_str(), s.size() + 1);
  g_has_pending.store(true);
}

void clear_pending() { g_has_pending.store(false); }

std::filesystem::path folder_of(const std::filesystem::path& p) {
  return p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
}

// Temporary files that ttq processes killed with SIGKILL (or by a crash) left in `folder`:
// ".NAME.tmp-PID" (ttq 0.1.0) and ".NAME.tmp-PID-XXXXXX", whose PID no longer runs. They can be
// as large as a model or a checkpoint, and nothing else would ever remove them.
void remove_stale_temps(const std::filesystem::path& folder) {
  static const std::regex name(R"(^\..+\.tmp-(\d+)(-[A-Za-z0-9]{6})?$)");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    std::smatch m;
    const std::string file = entry.path().filename().string();
    if (!std::regex_match(file, m, name) || !entry.is_regular_file(ec)) continue;
    const long pid = std::strtol(m[1].str().c_str(), nullptr, 10);
    if (pid <= 0 || pid == getpid() || kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    if (std::filesystem::remove(entry.path(), ec))
      spdlog::warn("removed {}, left by ttq process {} that no longer runs", entry.path().string(), pid);
  }
}

// Creates `destination`'s temporary file ".NAME.tmp-PID-XXXXXX" (the writer's pid tells whose it
// is). Its name is registered for an interrupt to remove before the file exists: with mkstemp, a
// signal between creating the file and registering it left the file behind.
int create_temp(const std::filesystem::path& destination, std::filesystem::path& temp) {
  static const char kLetters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::mt19937 pick(std::random_device{}());
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string suffix(6, ' ');
    for (char& c : suffix) c = kLetters[pick() % (sizeof kLetters - 1)];
    temp = folder_of(destination) / fmt::format(".{}.tmp-{}-{}", destination.filename().string(), getpid(), suffix);
    set_pending(temp);
    const int fd = open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  return -1;
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

RecordingFileBuf::~RecordingFileBuf() {
  if (fd_ >= 0) close(fd_);
}

void RecordingFileBuf::drain(const char* data, size_t size) {
  while (size > 0 && error_ == 0) {
    const ssize_t n = write(fd_, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error_ = n < 0 ? errno : EIO;
      break;
    }
    data += n, size -= static_cast<size_t>(n);
  }
}

int RecordingFileBuf::sync() {
  drain(pbase(), static_cast<size_t>(pptr() - pbase()));
  setp(buffer_.data(), buffer_.data() + buffer_.size());
  return 0;
}

RecordingFileBuf::int_type RecordingFileBuf::overflow(int_type c) {
  sync();
  if (!traits_type::eq_int_type(c, traits_type::eof())) {
    *pptr() = traits_type::to_char_type(c);
    pbump(1);
  }
  return traits_type::not_eof(c);
}

std::streamsize RecordingFileBuf::xsputn(const char* s, std::streamsize n) {
  if (n > epptr() - pptr()) {
    sync();
    if (n > epptr() - pptr()) {  // larger than the buffer: straight through
      drain(s, static_cast<size_t>(n));
      return n;
    }
  }
  std::memcpy(pptr(), s, static_cast<size_t>(n));
  pbump(static_cast<int>(n));
  return n;
}

bool RecordingFileBuf::finish() {
  sync();
  if (error_ == 0 && fsync(fd_) != 0 && errno != EINVAL) error_ = errno;
  if (close(fd_) != 0 && error_ == 0) error_ = errno;
  fd_ = -1;
  return error_ == 0;
}

AtomicOutput::AtomicOutput(std::filesystem::path destination) : destination_(std::move(destination)) {
  check_writable(destination_);
  remove_stale_temps(folder_of(destination_));
  const int fd = create_temp(destination_, temp_);
  if (fd < 0) {
    const int err = errno;
    clear_pending();
    throw input_error(fmt::format("cannot write {}: {}", destination_.string(), std::strerror(err)));
  }
  file_ = std::make_unique<RecordingFileBuf>(fd);
  stream_.rdbuf(file_.get());
}

AtomicOutput::~AtomicOutput() {
  if (!committed_) {
    file_.reset();
    std::error_code ec;
    std::filesystem::remove(temp_, ec);
  }
  clear_pending();
}

std::string AtomicOutput::failure(const std::string& detail) const {
  const int cause = file_ ? file_->error() : 0;
  return fmt::format("cannot write {}: {}", destination_.string(), cause ? std::strerror(cause) : detail);
}

void AtomicOutput::commit() {
  stream_.flush();
  if (!stream_ || !file_->finish()) throw runtime_error(failure("write failed"));
  std::error_code ec;
  std::filesystem::rename(temp_, destination_, ec);
  if (ec) throw runtime_error(failure(ec.message()));
  committed_ = true;
  clear_pending();
}

FileLock::FileLock(const std::filesystem::path& path, const std::string& what) {
  std::error_code ec;
  const bool folder = std::filesystem::is_directory(path, ec);  // folders are locked as they are
  fd_ = folder ? open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw input_error(fmt::format("cannot open {}: {}", what, std::strerror(errno)));
  if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    close(fd_);
    fd_ = -1;
    throw input_error(err == EWOULDBLOCK
                          ? fmt::format("{} is in use by another ttq run; wait for it or choose another", what)
                          : fmt::format("cannot lock {}: {}", what, std::strerror(err)));
  }
}

FileLock::~FileLock() {
  if (fd_ >= 0) close(fd_);  // releases the lock
}

void remove_pending_output() {
  if (g_has_pending.load()) unlink(g_pending_temp);  // async-signal-safe
}

void write_atomically(const std::filesystem::path& destination, const std::function<void(std::ostream&)>& write) {
  AtomicOutput out(destination);
  try {
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

namespace {

bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code ec;
  if (std::filesystem::equivalent(a, b, ec)) return true;
  const auto ca = std::filesystem::weakly_canonical(a, ec);
  const auto cb = std::filesystem::weakly_canonical(b, ec);
  return !ec && ca == cb;
}

}  // namespace

void refuse_overlaps(const std::vector<NamedPath>& inputs, const std::vector<NamedPath>& outputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& out = outputs[i];
    if (out.path.empty()) continue;
    for (const auto& in : inputs)
      if (!in.path.empty() && same_file(in.path, out.path))
        throw usage_error(fmt::format("{} {} is {}; choose another name", out.what, out.path.string(),
                                      in.what == "the model" ? "the input file" : "also " + in.what));
    for (size_t j = 0; j < i; ++j)
      if (!outputs[j].path.empty() && same_file(outputs[j].path, out.path))
        throw usage_error(fmt::format("{} {} is also {}; choose another name", out.what, out.path.string(),
                                      outputs[j].what));
  }
}

void refuse_same_file(const std::filesystem::path& input, const std::filesystem::path& output) {
  std::error_code ec;
  if (std::filesystem::equivalent(input, output, ec))
    throw usage_error(fmt::format("output {} is the input file; choose another name", output.string()));
}

}  // namespace ttq
