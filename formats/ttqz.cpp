#include "formats/ttqz.h"

#include <fmt/format.h>
#define XXH_INLINE_ALL  // header-only: nothing to link, for the fuzzer too
#include <xxhash.h>
#include <zstd.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "formats/little_endian.h"
#include "formats/ternary_codec.h"

namespace ttq::ttqz {
namespace {

using nlohmann::json;

// Caps checked before any allocation: corrupt or hostile files cannot ask for more.
constexpr uint64_t kMaxSections = 1u << 20;
constexpr uint64_t kMaxMetadataBytes = 64ull << 20;
constexpr uint64_t kMaxSectionRawBytes = 1ull << 40;
constexpr int64_t kMaxNumel = 1ll << 40;

// Fuzzing builds skip checksum checks so that mutated inputs reach the checks behind them
// (the libFuzzer convention); every other build verifies them.
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
constexpr bool kVerifyChecksums = false;
#else
constexpr bool kVerifyChecksums = true;
#endif

Error bad(const std::string& why) { return input_error(fmt::format("invalid .ttqz archive: {}", why)); }

using le::read_u32;
using le::read_u64;

// Where each field of the fixed header and of a section-table entry starts (man/ttqz.5); the parser
// and the writer name fields by these.
namespace at {
constexpr size_t kMagic = 0, kVersion = 8, kSectionCount = 12, kFileSize = 16, kProducer = 24, kHeaderChecksum = 40;
constexpr size_t kProducerSize = 16;
constexpr size_t kKind = 0, kCompression = 4, kOffset = 8, kStoredSize = 16, kRawSize = 24, kChecksum = 32;
}  // namespace at

uint64_t align_up(uint64_t v) { return (v + kAlignment - 1) / kAlignment * kAlignment; }

uint64_t header_checksum(const uint8_t* data, uint64_t table_end) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, data, at::kHeaderChecksum);  // everything before the checksum field
  XXH64_update(st, data + kFixedHeaderSize, table_end - kFixedHeaderSize);
  const uint64_t h = XXH64_digest(st);
  XXH64_freeState(st);
  return h;
}

std::string hex(const uint8_t* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += fmt::format("{}{:02x}", i ? " " : "", p[i]);
  return s;
}

void parse_header(Archive& a) {
  const uint8_t* d = a.data;
  if (a.size < kFixedHeaderSize)
    throw bad(fmt::format("{} bytes is too short for the {}-byte header", a.size, kFixedHeaderSize));
  if (std::memcmp(d + at::kMagic, kMagic, sizeof kMagic) != 0)
    throw bad(fmt::format("bad magic {} (expected {})", hex(d + at::kMagic, 8), hex(kMagic, 8)));
  a.version = read_u32(d + at::kVersion);
  if (a.version < kOldestVersion)
    throw bad(fmt::format("format version {} is older than any ttq wrote ({})", a.version, kOldestVersion));
  if (a.version > kVersion)
    throw bad(fmt::format("format version {} is newer than this ttq reads ({}); upgrade ttq", a.version, kVersion));
  const uint64_t count = read_u32(d + at::kSectionCount);
  if (count < 2 || count > kMaxSections)
    throw bad(fmt::format("section count {} outside [2, {}]", count, kMaxSections));
  const uint64_t table_end = kFixedHeaderSize + count * kSectionEntrySize;  // cannot overflow
  if (table_end > a.size)
    throw bad(fmt::format("section table of {} entries runs past the end of the file", count));
  const uint64_t declared = read_u64(d + at::kFileSize);
  if (declared != a.size)
    throw bad(fmt::format("header says {} bytes but the file has {} (truncated or extended)", declared, a.size));
  const char* producer = reinterpret_cast<const char*>(d + at::kProducer);
  a.producer.assign(producer, strnlen(producer, at::kProducerSize));
  if (read_u64(d + at::kHeaderChecksum) != header_checksum(d, table_end) && kVerifyChecksums)
    throw bad("header checksum mismatch");

  uint64_t expected_offset = align_up(table_end);
  uint64_t previous_end = table_end;
  for (uint64_t i = 0; i < count; ++i) {
    const uint8_t* e = d + kFixedHeaderSize + i * kSectionEntrySize;
    Section s;
    const uint32_t kind = read_u32(e + at::kKind), compression = read_u32(e + at::kCompression);
    if (kind < 1 || kind > 3) throw bad(fmt::format("section {}: unknown kind {}", i, kind));
    if (compression > 1) throw bad(fmt::format("section {}: unknown compression {}", i, compression));
    s.kind = static_cast<SectionKind>(kind);
    s.compression = static_cast<Compression>(compression);
    s.offset = read_u64(e + at::kOffset);
    s.stored_size = read_u64(e + at::kStoredSize);
    s.raw_size = read_u64(e + at::kRawSize);
    s.checksum = read_u64(e + at::kChecksum);
    if (s.offset != expected_offset)
      throw bad(fmt::format("section {}: offset {} where {} was expected (sections must be contiguous "
                            "and {}-byte aligned)", i, s.offset, expected_offset, kAlignment));
    if (s.offset > a.size || s.stored_size > a.size - s.offset)
      throw bad(fmt::format("section {}: {} bytes at offset {} run past the end of the file", i,
                            s.stored_size, s.offset));
    if (s.raw_size > kMaxSectionRawBytes)
      throw bad(fmt::format("section {}: size {} exceeds the cap of {}", i, s.raw_size, kMaxSectionRawBytes));
    if (s.compression == Compression::None && s.raw_size != s.stored_size)
      throw bad(fmt::format("section {}: uncompressed but raw size {} != stored size {}", i, s.raw_size,
                            s.stored_size));
    for (uint64_t p = previous_end; p < s.offset; ++p)
      if (d[p] != 0) throw bad(fmt::format("non-zero padding byte at offset {}", p));
    previous_end = s.offset + s.stored_size;
    expected_offset = align_up(previous_end);
    a.sections.push_back(s);
  }
  if (previous_end != a.size)
    throw bad(fmt::format("{} bytes after the last section", a.size - previous_end));
  for (size_t i = 0; i < a.sections.size(); ++i) {
    const Section& s = a.sections[i];
    if (XXH64(d + s.offset, s.stored_size, 0) != s.checksum && kVerifyChecksums)
      throw bad(fmt::format("section {}: checksum mismatch (corrupt data)", i));
  }
  if (a.sections[0].kind != SectionKind::Metadata) throw bad("section 0 is not the metadata");
  if (a.sections[1].kind != SectionKind::Program) throw bad("section 1 is not the TorchScript program");
  for (size_t i = 2; i < a.sections.size(); ++i)
    if (a.sections[i].kind != SectionKind::Tensor) throw bad(fmt::format("section {} is not a tensor", i));
}

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& name) {
  int64_t n = 1;
  for (const int64_t dim : shape) {
    if (dim < 0 || dim > kMaxNumel || __builtin_mul_overflow(n, dim, &n) || n > kMaxNumel)
      throw bad(fmt::format("tensor '{}': shape out of range", name));
  }
  return n;
}

TensorEntry parse_tensor(const json& j, size_t section_count) {
  TensorEntry t;
  t.name = j.at("name").get<std::string>();
  if (t.name.empty()) throw bad("a tensor has an empty name");
  const std::string role = j.at("role").get<std::string>();
  if (role != "parameter" && role != "buffer") throw bad(fmt::format("tensor '{}': unknown role '{}'", t.name, role));
  t.is_parameter = role == "parameter";
  t.requires_grad = j.at("requires_grad").get<bool>();
  t.shape = j.at("shape").get<std::vector<int64_t>>();
  if (t.shape.size() > 16) throw bad(fmt::format("tensor '{}': {} dimensions", t.name, t.shape.size()));
  t.dtype = j.at("dtype").get<std::string>();
  if (!dtype_size(t.dtype)) throw bad(fmt::format("tensor '{}': unknown dtype '{}'", t.name, t.dtype));
  const uint64_t section = j.at("section").get<uint64_t>();
  if (section < 2 || section >= section_count)
    throw bad(fmt::format("tensor '{}': section {} out of range", t.name, section));
  t.section = static_cast<uint32_t>(section);
  const std::string encoding = j.at("encoding").get<std::string>();
  if (encoding == to_string(Encoding::Raw)) {
    t.encoding = Encoding::Raw;
    t.stored_dtype = j.at("stored_dtype").get<std::string>();
    const bool same = t.stored_dtype == t.dtype;
    const bool narrowed = t.dtype == "float32" && (t.stored_dtype == "float16" || t.stored_dtype == "bfloat16");
    if (!same && !narrowed)
      throw bad(fmt::format("tensor '{}': cannot restore {} from {}", t.name, t.dtype, t.stored_dtype));
  } else if (encoding == to_string(Encoding::TernaryRans)) {
    t.encoding = Encoding::TernaryRans;
    if (t.dtype != "float32" && t.dtype != "float64")
      throw bad(fmt::format("tensor '{}': ternary codes for dtype {}", t.name, t.dtype));
    // JSON has no infinity or NaN (writers emit null) and a double may overflow a float.
    for (const char* key : {"wp", "wn"}) {
      const json& v = j.at(key);
      const float f = v.is_number() ? v.get<float>() : NAN;
      if (!std::isfinite(f)) throw bad(fmt::format("tensor '{}': non-finite scale {}", t.name, key));
      (key[1] == 'p' ? t.wp : t.wn) = f;
    }
    const auto& c = j.at("counts");
    t.counts = {c.at("neg").get<int64_t>(), c.at("zero").get<int64_t>(), c.at("pos").get<int64_t>()};
  } else {
    throw bad(fmt::format("tensor '{}': unknown encoding '{}'", t.name, encoding));
  }
  return t;
}

// Each tensor's section must hold exactly what its shape and encoding need.
void check_tensor_against_section(const TensorEntry& t, const Section& s) {
  const int64_t n = checked_numel(t.shape, t.name);
  if (t.encoding == Encoding::Raw) {
    const uint64_t expected = static_cast<uint64_t>(n) * dtype_size(t.stored_dtype);
    if (s.raw_size != expected)
      throw bad(fmt::format("tensor '{}': {} bytes stored for {} x {} ({} expected)", t.name, s.raw_size,
                            n, t.stored_dtype, expected));
    return;
  }
  const CodeCounts& c = t.counts;
  if (c.neg < 0 || c.zero < 0 || c.pos < 0 || c.neg > n || c.zero > n || c.pos > n || c.total() != n)
    throw bad(fmt::format("tensor '{}': code counts do not add up to its {} elements", t.name, n));
  if (s.compression != Compression::None) throw bad(fmt::format("tensor '{}': compressed ternary codes", t.name));
  // The coder's output: a 14-byte header and two states, then at most 2 bits a code plus 4096 bytes.
  if (s.raw_size < 14 || s.raw_size > 14 + static_cast<uint64_t>(n) / 4 + 4096)
    throw bad(fmt::format("tensor '{}': {} bytes cannot hold {} ternary codes", t.name, s.raw_size, n));
}

void parse_metadata(Archive& a) {
  const Section& s = a.sections[0];
  if (s.raw_size > kMaxMetadataBytes) throw bad(fmt::format("metadata of {} bytes exceeds the cap", s.raw_size));
  const auto bytes = section_bytes(a, 0);
  json doc;
  try {
    doc = json::parse(bytes.begin(), bytes.end());
    if (doc.at("format") != "ttqz") throw bad("metadata is not ttqz metadata");
    a.ttq_json = doc.at("ttq_json").get<std::string>();
    std::set<std::string> names;
    std::vector<bool> used(a.sections.size(), false);
    for (const auto& j : doc.at("tensors")) {
      TensorEntry t = parse_tensor(j, a.sections.size());
      if (!names.insert(t.name).second) throw bad(fmt::format("duplicate tensor name '{}'", t.name));
      if (used[t.section]) throw bad(fmt::format("section {} used by two tensors", t.section));
      used[t.section] = true;
      check_tensor_against_section(t, a.sections[t.section]);
      a.tensors.push_back(std::move(t));
    }
    if (a.tensors.size() != a.sections.size() - 2) throw bad("tensor sections without a tensor entry");
  } catch (const json::exception& e) {
    throw bad(fmt::format("malformed metadata ({})", e.what()));
  }
}

std::vector<uint8_t> compress(const std::vector<uint8_t>& raw, int level) {
  std::vector<uint8_t> out(ZSTD_compressBound(raw.size()));
  const size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), level);
  if (ZSTD_isError(n)) throw runtime_error(fmt::format("zstd: {}", ZSTD_getErrorName(n)));
  out.resize(n);
  return out;
}

// The writer, as the mirror of the parser: a tensor's entry (parse_tensor), a section's stored bytes
// and table entry, their places, and the header (parse_header).
json tensor_json(const TensorEntry& t) {
  json j = {{"name", t.name}, {"role", t.is_parameter ? "parameter" : "buffer"}, {"requires_grad", t.requires_grad},
            {"shape", t.shape}, {"dtype", t.dtype}, {"encoding", to_string(t.encoding)}, {"section", t.section}};
  if (t.encoding == Encoding::Raw) {
    j["stored_dtype"] = t.stored_dtype;
  } else {
    j["wp"] = t.wp;
    j["wn"] = t.wn;
    j["counts"] = {{"neg", t.counts.neg}, {"zero", t.counts.zero}, {"pos", t.counts.pos}};
  }
  return j;
}

struct Stored {
  Section section;
  std::vector<uint8_t> bytes;
};

// zstd where that is smaller, else the raw bytes.
Stored store(SectionKind kind, const std::vector<uint8_t>& raw, bool compressible, int level) {
  Stored s;
  s.section.kind = kind;
  s.section.raw_size = raw.size();
  if (compressible) {
    auto packed = compress(raw, level);
    if (packed.size() < raw.size()) {
      s.section.compression = Compression::Zstd;
      s.bytes = std::move(packed);
    }
  }
  if (s.section.compression == Compression::None) s.bytes = raw;
  s.section.checksum = XXH64(s.bytes.data(), s.bytes.size(), 0);
  s.section.stored_size = s.bytes.size();
  return s;
}

// Each section at the aligned running total after the table, as the parser expects; the file size.
uint64_t place_sections(std::vector<Stored>& sections) {
  const uint64_t table_end = kFixedHeaderSize + sections.size() * kSectionEntrySize;
  uint64_t offset = align_up(table_end), end = table_end;
  for (auto& s : sections) {
    s.section.offset = offset;
    end = offset + s.section.stored_size;
    offset = align_up(end);
  }
  return end;
}

std::vector<uint8_t> header_bytes(const std::vector<Stored>& sections, uint64_t file_size) {
  std::vector<uint8_t> h(kFixedHeaderSize + sections.size() * kSectionEntrySize, 0);
  std::memcpy(h.data() + at::kMagic, kMagic, sizeof kMagic);
  le::store_u32(h.data() + at::kVersion, kVersion);
  le::store_u32(h.data() + at::kSectionCount, static_cast<uint32_t>(sections.size()));
  le::store_u64(h.data() + at::kFileSize, file_size);
  std::strncpy(reinterpret_cast<char*>(h.data() + at::kProducer), TTQ_TOOL, at::kProducerSize);
  for (size_t i = 0; i < sections.size(); ++i) {
    const Section& s = sections[i].section;
    const size_t e = kFixedHeaderSize + i * kSectionEntrySize;
    le::store_u32(h.data() + e + at::kKind, static_cast<uint32_t>(s.kind));
    le::store_u32(h.data() + e + at::kCompression, static_cast<uint32_t>(s.compression));
    le::store_u64(h.data() + e + at::kOffset, s.offset);
    le::store_u64(h.data() + e + at::kStoredSize, s.stored_size);
    le::store_u64(h.data() + e + at::kRawSize, s.raw_size);
    le::store_u64(h.data() + e + at::kChecksum, s.checksum);
  }
  le::store_u64(h.data() + at::kHeaderChecksum, header_checksum(h.data(), h.size()));
  return h;
}

}  // namespace

const char* to_string(Encoding e) { return e == Encoding::Raw ? "raw" : "ternary-rans"; }

int64_t TensorEntry::numel() const { return checked_numel(shape, name); }

size_t dtype_size(const std::string& dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.name) return d.size;
  return 0;
}

Archive parse(const uint8_t* data, uint64_t size) {
  Archive a;
  a.data = data;
  a.size = size;
  parse_header(a);
  parse_metadata(a);
  return a;
}

std::vector<uint8_t> section_bytes(const Archive& a, uint32_t index) {
  const Section& s = a.sections.at(index);
  const uint8_t* src = a.data + s.offset;
  if (s.compression == Compression::None) return std::vector<uint8_t>(src, src + s.stored_size);
  const unsigned long long content = ZSTD_getFrameContentSize(src, s.stored_size);
  if (content != s.raw_size)
    throw bad(fmt::format("section {}: zstd frame declares {} bytes, the table {}", index,
                          content == ZSTD_CONTENTSIZE_UNKNOWN || content == ZSTD_CONTENTSIZE_ERROR
                              ? std::string("no size") : std::to_string(content), s.raw_size));
  std::vector<uint8_t> out(s.raw_size);
  const size_t n = ZSTD_decompress(out.data(), out.size(), src, s.stored_size);
  if (ZSTD_isError(n) || n != s.raw_size)
    throw bad(fmt::format("section {}: zstd: {}", index, ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short frame"));
  return out;
}

namespace {

void check_counts(const TensorEntry& t, const int64_t counts[3]) {
  if (counts[0] != t.counts.neg || counts[1] != t.counts.zero || counts[2] != t.counts.pos)
    throw bad(fmt::format("tensor '{}': decoded code counts differ from the metadata", t.name));
}

}  // namespace

std::vector<uint8_t> ternary_symbols(const Archive& a, const TensorEntry& t) {
  const Section& s = a.sections.at(t.section);
  std::vector<uint8_t> symbols(static_cast<size_t>(t.numel()));
  decode_ternary(a.data + s.offset, s.stored_size, symbols.size(), symbols.data());
  int64_t counts[3] = {0, 0, 0};
  for (const uint8_t sym : symbols) ++counts[sym];
  check_counts(t, counts);
  return symbols;
}

void ternary_values(const Archive& a, const TensorEntry& t, float* out) {
  const Section& s = a.sections.at(t.section);
  const float levels[3] = {-t.wn, 0.0f, t.wp};
  int64_t counts[3];
  decode_ternary_levels(a.data + s.offset, s.stored_size, static_cast<size_t>(t.numel()), levels, out, counts);
  check_counts(t, counts);
}

Summary summarize(const Archive& a) {
  Summary s;
  s.file_bytes = a.size;
  s.metadata_bytes = a.sections[0].stored_size;
  s.program_bytes = a.sections[a.program_section].stored_size;
  for (const auto& t : a.tensors) {
    const Section& sec = a.sections[t.section];
    const auto n = static_cast<double>(t.numel());
    TensorSummary ts{&t, sec.stored_size, n ? 8.0 * sec.stored_size / n : 0.0, 0.0};
    if (t.encoding == Encoding::TernaryRans) {
      ts.entropy_bits = t.counts.entropy_bits();
      s.ternary_weights += t.numel();
      s.ternary_bytes += sec.stored_size;
      s.ternary_entropy_bytes += t.counts.entropy_bytes();
      s.ternary_bound_bytes += ternary_bound_bytes(t.counts);
    } else {
      s.other_raw_bytes += sec.raw_size;
    }
    s.tensors.push_back(ts);
  }
  return s;
}

void write(std::ostream& out, const std::string& ttq_json, const std::vector<uint8_t>& program,
           std::vector<TensorEntry> tensors, const std::vector<Payload>& tensor_payloads, int level) {
  json entries = json::array();
  for (auto& t : tensors) {
    t.section += 2;  // after the metadata and the program
    entries.push_back(tensor_json(t));
  }
  const std::string meta = json{{"format", "ttqz"}, {"ttq_json", ttq_json}, {"tensors", entries}}.dump();
  std::vector<Stored> sections;
  sections.push_back(store(SectionKind::Metadata, std::vector<uint8_t>(meta.begin(), meta.end()), true, level));
  sections.push_back(store(SectionKind::Program, program, true, level));
  for (const auto& p : tensor_payloads) sections.push_back(store(SectionKind::Tensor, p.bytes, p.compressible, level));
  const uint64_t file_size = place_sections(sections);
  const std::vector<uint8_t> header = header_bytes(sections, file_size);

  static const char zeros[kAlignment] = {};
  out.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size()));
  uint64_t written = header.size();
  for (const auto& s : sections) {
    out.write(zeros, static_cast<std::streamsize>(s.section.offset - written));
    out.write(reinterpret_cast<const char*>(s.bytes.data()), static_cast<std::streamsize>(s.bytes.size()));
    written = s.section.offset + s.bytes.size();
  }
}

}  // namespace ttq::ttqz
