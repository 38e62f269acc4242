// formats/atomic_file: outputs appear whole or not at all, write errors surface at commit, one run
// per locked path, and outputs that would overwrite an input are refused.
#include <fcntl.h>
#include <unistd.h>

#include "catch.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "formats/atomic_file.h"

using namespace ttq;
namespace fs = std::filesystem;

namespace {

fs::path fresh_folder(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("ttq_unit_atomic_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string contents(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

size_t entries(const fs::path& dir) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

}  // namespace

TEST_CASE("a committed output replaces the old one whole, and no temporary file stays") {
  const fs::path dir = fresh_folder("commit");
  const fs::path out = dir / "model.pt";
  std::ofstream(out) << "old";
  const std::string big(3 << 20, 'x');  // larger than the stream buffer
  write_atomically(out, [&](std::ostream& s) { s << big; });
  CHECK(contents(out) == big);
  CHECK(entries(dir) == 1);
}

TEST_CASE("a writer that throws leaves the old output and no temporary file, with one error naming it") {
  const fs::path dir = fresh_folder("throw");
  const fs::path out = dir / "model.pt";
  std::ofstream(out) << "old";
  try {
    write_atomically(out, [](std::ostream& s) {
      s << "partial";
      throw std::runtime_error("serializer failed\nmore detail");
    });
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Runtime);
    CHECK_THAT(e.what(), Catch::Contains(out.string()));
    CHECK_THAT(e.what(), Catch::Contains("serializer failed"));
    CHECK(std::string(e.what()).find('\n') == std::string::npos);
  }
  CHECK(contents(out) == "old");
  CHECK(entries(dir) == 1);
}

TEST_CASE("a full disk is recorded, not reported to the stream, and fails at finish") {
  const int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  RecordingFileBuf buffer(fd);
  std::ostream stream(&buffer);
  stream << std::string(200000, 'x');
  CHECK(stream.good());  // LibTorch's zip writer aborts on a failed stream: it must not see one
  CHECK(!buffer.finish());
  CHECK(buffer.error() == ENOSPC);
}

TEST_CASE("a missing folder, or a folder as the output, is an input error before any work") {
  const fs::path dir = fresh_folder("writable");
  CHECK_NOTHROW(check_writable(dir / "o.pt"));
  try {
    check_writable(dir / "missing" / "o.pt");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Input);
    CHECK_THAT(e.what(), Catch::Contains("does not exist"));
  }
  CHECK_THROWS_WITH(check_writable(dir), Catch::Contains("it is a folder"));
}

TEST_CASE("a locked path refuses a second lock until the first is released") {
  const fs::path dir = fresh_folder("lock");
  const fs::path log = dir / "run.jsonl";
  {
    FileLock first(log, "the log run.jsonl");
    try {
      FileLock second(log, "the log run.jsonl");
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Input);
      CHECK_THAT(e.what(), Catch::Contains("the log run.jsonl is in use by another ttq run"));
    }
    CHECK_NOTHROW(FileLock(dir, "--checkpoint-dir"));  // another path: its own lock
  }
  CHECK_NOTHROW(FileLock(log, "the log run.jsonl"));
}

TEST_CASE("an output that is an input or another output, by any name, is a usage error naming both") {
  const fs::path dir = fresh_folder("overlaps");
  const fs::path model = dir / "model.pt";
  std::ofstream(model) << "model";
  fs::create_hard_link(model, dir / "link.pt");
  const std::vector<NamedPath> inputs{{"the model", model}, {"--teacher", ""}};
  CHECK_NOTHROW(refuse_overlaps(inputs, {{"-o", dir / "out.pt"}, {"--log", dir / "run.jsonl"}}));
  CHECK_THROWS_WITH(refuse_overlaps(inputs, {{"-o", dir / "link.pt"}}), Catch::Contains("is the input file"));
  CHECK_THROWS_WITH(refuse_overlaps(inputs, {{"-o", dir / "sub" / ".." / "model.pt"}}),
                    Catch::Contains("is the input file"));
  CHECK_THROWS_WITH(refuse_overlaps(inputs, {{"-o", dir / "a.pt"}, {"--log", dir / "a.pt"}}),
                    Catch::Contains("--log") && Catch::Contains("is also -o"));
}
