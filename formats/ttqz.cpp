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

uint32_t read_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint64_t read_u64(const uint8_t* p) { return uint64_t(read_u32(p)) | uint64_t(read_u32(p + 4)) << 32; }
void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u64(std::vector<uint8_t>& b, uint64_t v) {
  put_u32(b, static_cast<uint32_t>(v));
  put_u32(b, static_cast<uint32_t>(v >> 32));
}

uint64_t align_up(uint64_t v) { return (v + kAlignment - 1) / kAlignment * kAlignment; }

uint64_t header_checksum(const uint8_t* data, uint64_t table_end) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, data, 40);  // everything before the checksum field
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
  if (std::memcmp(d, kMagic, sizeof kMagic) != 0)
    throw bad(fmt::format("bad magic {} (expected {})", hex(d, 8), hex(kMagic, 8)));
  a.version = read_u32(d + 8);
  if (a.version < kOldestVersion)
    throw bad(fmt::format("format version {} is older than any ttq wrote ({})", a.version, kOldestVersion));
  if (a.version > kVersion)
    throw bad(fmt::format("format version {} is newer than this ttq reads ({}); upgrade ttq", a.version, kVersion));
  const uint64_t count = read_u32(d + 12);
  if (count < 2 || count > kMaxSections)
    throw bad(fmt::format("section count {} outside [2, {}]", count, kMaxSections));
  const uint64_t table_end = kFixedHeaderSize + count * kSectionEntrySize;  // cannot overflow
  if (table_end > a.size)
    throw bad(fmt::format("section table of {} entries runs past the end of the file", count));
  const uint64_t declared = read_u64(d + 16);
  if (declared != a.size)
    throw bad(fmt::format("header says {} bytes but the file has {} (truncated or extended)", declared, a.size));
  const char* producer = reinterpret_cast<const char*>(d + 24);
  a.producer.assign(producer, strnlen(producer, 16));
  if (read_u64(d + 40) != header_checksum(d, table_end) && kVerifyChecksums) throw bad("header checksum mismatch");

  uint64_t expected_offset = align_up(table_end);
  uint64_t previous_end = table_end;
  for (uint64_t i = 0; i < count; ++i) {
    const uint8_t* e = d + kFixedHeaderSize + i * kSectionEntrySize;
    Section s;
    const uint32_t kind = read_u32(e), compression = read_u32(e + 4);
    if (kind < 1 || kind > 3) throw bad(fmt::format("section {}: unknown kind {}", i, kind));
    if (compression > 1) throw bad(fmt::format("section {}: unknown compression {}", i, compression));
    s.kind = static_cast<SectionKind>(kind);
    s.compression = static_cast<Compression>(compression);
    s.offset = read_u64(e + 8);
    s.stored_size = read_u64(e + 16);
    s.raw_size = read_u64(e + 24);
    s.checksum = read_u64(e + 32);
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
  struct Stored {
    Section section;
    std::vector<uint8_t> bytes;
  };
  const auto store = [&](SectionKind kind, const std::vector<uint8_t>& raw, bool compressible) {
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
  };

  json entries = json::array();
  for (auto& t : tensors) {
    t.section += 2;
    json j = {{"name", t.name}, {"role", t.is_parameter ? "parameter" : "buffer"},
              {"requires_grad", t.requires_grad}, {"shape", t.shape}, {"dtype", t.dtype},
              {"encoding", to_string(t.encoding)}, {"section", t.section}};
    if (t.encoding == Encoding::Raw) {
      j["stored_dtype"] = t.stored_dtype;
    } else {
      j["wp"] = t.wp;
      j["wn"] = t.wn;
      j["counts"] = {{"neg", t.counts.neg}, {"zero", t.counts.zero}, {"pos", t.counts.pos}};
    }
    entries.push_back(std::move(j));
  }
  const json meta = {{"format", "ttqz"}, {"ttq_json", ttq_json}, {"tensors", entries}};
  const std::string meta_text = meta.dump();

  std::vector<Stored> sections;
  sections.push_back(store(SectionKind::Metadata, std::vector<uint8_t>(meta_text.begin(), meta_text.end()), true));
  sections.push_back(store(SectionKind::Program, program, true));
  for (const auto& p : tensor_payloads) sections.push_back(store(SectionKind::Tensor, p.bytes, p.compressible));

  const uint64_t table_end = kFixedHeaderSize + sections.size() * kSectionEntrySize;
  uint64_t offset = align_up(table_end), end = table_end;
  for (auto& s : sections) {
    s.section.offset = offset;
    end = offset + s.section.stored_size;
    offset = align_up(end);
  }

  std::vector<uint8_t> header(kMagic, kMagic + sizeof kMagic);
  put_u32(header, kVersion);
  put_u32(header, static_cast<uint32_t>(sections.size()));
  put_u64(header, end);
  char producer[16] = {};
  std::strncpy(producer, "ttq " TTQ_VERSION, sizeof producer);
  header.insert(header.end(), producer, producer + sizeof producer);
  put_u64(header, 0);  // header checksum, filled below
  for (const auto& s : sections) {
    put_u32(header, static_cast<uint32_t>(s.section.kind));
    put_u32(header, static_cast<uint32_t>(s.section.compression));
    put_u64(header, s.section.offset);
    put_u64(header, s.section.stored_size);
    put_u64(header, s.section.raw_size);
    put_u64(header, s.section.checksum);
  }
  const uint64_t h = header_checksum(header.data(), table_end);
  for (int i = 0; i < 8; ++i) header[40 + i] = static_cast<uint8_t>(h >> (8 * i));

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
