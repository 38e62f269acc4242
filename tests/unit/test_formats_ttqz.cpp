// formats/ttqz: bit-exact round trips of real archives, and one hand-made bad file per failure
// class of the reader, plus a random byte-flip sweep.
#include "catch.h"

#include <cstring>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/util.h"
#include "formats/archive.h"
#include "formats/torchscript.h"
#include "formats/ttqz.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

using namespace ttq;

namespace {

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// A real archive of the small CNN fixture, quantized, as bytes.
std::vector<uint8_t> real_archive() {
  auto loaded = load_torchscript(std::string(TTQ_FIXTURES) + "/small_cnn.pt");
  ModelMetadata meta;
  meta.layers = quantize_module(loaded.module, {});
  meta.command = "quantize";
  const std::string path = std::string(TTQ_FIXTURES) + "/unit_small_cnn.ttqz";
  write_archive(loaded.module, meta, {}, path);
  return read_file(path);
}

void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  put_u32(b, at, static_cast<uint32_t>(v));
  put_u32(b, at + 4, static_cast<uint32_t>(v >> 32));
}
uint64_t get_u64(const std::vector<uint8_t>& b, size_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | b[at + i];
  return v;
}

// Rewrites the archive through the writer after editing its parsed contents, so that a bad
// value arrives with valid checksums and the check that must catch it is the semantic one.
std::vector<uint8_t> rewrite(const std::vector<uint8_t>& good,
                             const std::function<void(std::vector<ttqz::TensorEntry>&)>& edit) {
  const auto a = ttqz::parse(good.data(), good.size());
  std::vector<ttqz::TensorEntry> tensors = a.tensors;
  std::vector<ttqz::Payload> payloads;
  for (auto& t : tensors) {
    const auto& s = a.sections[t.section];
    payloads.push_back({t.encoding == ttqz::Encoding::Raw ? ttqz::section_bytes(a, t.section)
                                                          : std::vector<uint8_t>(a.data + s.offset, a.data + s.offset + s.stored_size),
                        t.encoding == ttqz::Encoding::Raw});
    t.section -= 2;
  }
  edit(tensors);
  std::ostringstream out;
  ttqz::write(out, a.ttq_json, ttqz::section_bytes(a, 1), tensors, payloads, 3);
  const std::string s = out.str();
  return std::vector<uint8_t>(s.begin(), s.end());
}

// Recomputes the header checksum after a deliberate header edit (so the edit itself is tested).
void reseal_header(std::vector<uint8_t>& b) {
  const uint32_t count = b[12] | b[13] << 8 | b[14] << 16 | uint32_t(b[15]) << 24;
  // As man/ttqz.5 specifies: XXH64 over bytes [0, 40) followed by the section table.
  std::vector<uint8_t> covered(b.begin(), b.begin() + 40);
  covered.insert(covered.end(), b.begin() + 48, b.begin() + 48 + count * 40);
  put_u64(b, 40, XXH64(covered.data(), covered.size(), 0));
}

}  // namespace

TEST_CASE("a real archive parses and restores every tensor bit-exactly") {
  const auto bytes = real_archive();
  const auto a = ttqz::parse(bytes.data(), bytes.size());
  CHECK(a.version == ttqz::kVersion);
  CHECK(a.tensors.size() == 8);  // 4 weights + 4 biases
  const auto restored = read_archive(std::string(TTQ_FIXTURES) + "/unit_small_cnn.ttqz");
  auto original = load_torchscript(std::string(TTQ_FIXTURES) + "/small_cnn.pt").module;
  quantize_module(original, {});
  const auto got = restored.module.named_parameters();
  for (const auto& p : original.named_parameters()) {
    CAPTURE(p.name);
    CHECK(torch::equal(p.value, restored.module.attr(p.name.substr(0, p.name.find('.')))
                                    .toModule()
                                    .attr(p.name.substr(p.name.find('.') + 1))
                                    .toTensor()));
  }
  REQUIRE(restored.metadata);
  CHECK(restored.metadata->layers.size() == 2);
}

TEST_CASE("each failure class of the reader gives its own clear message") {
  const auto good = real_archive();
  const auto a = ttqz::parse(good.data(), good.size());
  const auto expect = [](std::vector<uint8_t> bytes, const std::string& fragment) {
    const std::string m = message_of([&] { ttqz::parse(bytes.data(), bytes.size()); });
    CAPTURE(m);
    CHECK(m.find(fragment) != std::string::npos);
  };

  SECTION("too short") { expect({good.begin(), good.begin() + 20}, "too short"); }
  SECTION("bad magic echoes the bytes") {
    auto b = good;
    std::memcpy(b.data(), "PK\x03\x04", 4);
    expect(b, "bad magic 50 4b 03 04");
  }
  SECTION("version too old and too new") {
    auto b = good;
    put_u32(b, 8, 0);
    expect(b, "older than any ttq wrote");
    put_u32(b, 8, 99);
    expect(b, "newer than this ttq reads");
  }
  SECTION("section count beyond the cap or the file") {
    auto b = good;
    put_u32(b, 12, 1u << 30);
    expect(b, "section count");
    put_u32(b, 12, 100000);
    expect(b, "runs past the end of the file");
  }
  SECTION("truncated and extended files") {
    expect({good.begin(), good.end() - 1}, "truncated or extended");
    auto b = good;
    b.push_back(0);
    expect(b, "truncated or extended");
  }
  SECTION("header checksum") {
    auto b = good;
    b[24] ^= 1;  // the producer string
    expect(b, "header checksum mismatch");
  }
  SECTION("misplaced or overlapping section") {
    auto b = good;
    const size_t entry = 48 + 2 * 40;
    put_u64(b, entry + 8, get_u64(b, entry + 8) - 64);  // overlaps section 1
    reseal_header(b);
    expect(b, "sections must be contiguous");
  }
  SECTION("section running past the end") {
    auto b = good;
    const size_t last = 48 + (a.sections.size() - 1) * 40;
    put_u64(b, last + 16, get_u64(b, last + 16) + 1000);
    reseal_header(b);
    expect(b, "run past the end of the file");
  }
  SECTION("non-zero padding") {
    auto b = good;
    const uint64_t end0 = a.sections[0].offset + a.sections[0].stored_size;
    REQUIRE(end0 < a.sections[1].offset);
    b[end0] = 0xff;
    expect(b, "non-zero padding");
  }
  SECTION("section checksum") {
    auto b = good;
    b[a.sections[3].offset] ^= 0x40;
    expect(b, "checksum mismatch (corrupt data)");
  }
  SECTION("duplicate names") {
    expect(rewrite(good, [](auto& t) { t[1].name = t[0].name; }), "duplicate tensor name");
  }
  SECTION("shape that does not match the stored bytes") {
    expect(rewrite(good, [](auto& t) {
             for (auto& e : t)
               if (e.encoding == ttqz::Encoding::Raw) { e.shape[0] += 1; break; }
           }),
           "bytes stored for");
  }
  SECTION("absurd shapes") {
    expect(rewrite(good, [](auto& t) { t[0].shape = {1ll << 40, 1ll << 40}; }), "shape out of range");
  }
  SECTION("non-finite scale") {
    expect(rewrite(good, [](auto& t) {
             for (auto& e : t)
               if (e.encoding == ttqz::Encoding::TernaryRans) e.wp = std::numeric_limits<float>::infinity();
           }),
           "non-finite scale");
  }
  SECTION("code counts that do not add up") {
    expect(rewrite(good, [](auto& t) {
             for (auto& e : t)
               if (e.encoding == ttqz::Encoding::TernaryRans) e.counts.zero += 1;
           }),
           "code counts do not add up");
  }
  SECTION("counts that add up but differ from the stream are caught at decode") {
    const auto b = rewrite(good, [](auto& t) {
      for (auto& e : t)
        if (e.encoding == ttqz::Encoding::TernaryRans) e.counts.zero += 1, e.counts.pos -= 1;
    });
    const auto parsed = ttqz::parse(b.data(), b.size());
    for (const auto& t : parsed.tensors)
      if (t.encoding == ttqz::Encoding::TernaryRans)
        CHECK(message_of([&] { ttqz::ternary_symbols(parsed, t); }).find("differ from the metadata") != std::string::npos);
  }
}

TEST_CASE("every random byte flip of a real archive is rejected with a ttq error") {
  const auto good = real_archive();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<size_t> where(0, good.size() - 1);
  std::uniform_int_distribution<int> bit(0, 7);
  int rejected = 0;
  const int flips = 3000;
  for (int i = 0; i < flips; ++i) {
    auto b = good;
    const size_t at = where(rng);
    b[at] ^= static_cast<uint8_t>(1u << bit(rng));
    try {
      ttqz::parse(b.data(), b.size());
    } catch (const Error&) {
      ++rejected;
      continue;
    }
    FAIL_CHECK("flip at byte " << at << " was accepted");
  }
  CHECK(rejected == flips);
}

TEST_CASE("the archive's dtype table matches LibTorch's scalar types and sizes") {
  const std::map<std::string, torch::Dtype> expected = {
      {"float32", torch::kFloat32}, {"float64", torch::kFloat64}, {"float16", torch::kFloat16},
      {"bfloat16", torch::kBFloat16}, {"int64", torch::kInt64}, {"int32", torch::kInt32},
      {"int16", torch::kInt16}, {"int8", torch::kInt8}, {"uint8", torch::kUInt8}, {"bool", torch::kBool}};
  REQUIRE(std::size(ttqz::kDtypes) == expected.size());
  for (const auto& d : ttqz::kDtypes) {
    CAPTURE(d.name);
    REQUIRE(expected.count(d.name));
    CHECK(static_cast<int>(expected.at(d.name)) == d.scalar_type);
    CHECK(c10::elementSize(static_cast<c10::ScalarType>(d.scalar_type)) == d.size);
    CHECK(ttqz::dtype_size(d.name) == d.size);
  }
}
