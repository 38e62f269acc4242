// The .ttqz archive (specified in man/ttqz.5): parsing with full validation, and writing.
// Plain C++ (no LibTorch) so that the fuzzer links it; formats/archive.h builds modules from it.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "core/code_counts.h"

namespace ttq::ttqz {

inline constexpr uint8_t kMagic[8] = {0x89, 'T', 'T', 'Q', 'Z', '\r', '\n', 0x1a};
// Format versions (bump on any change a reader must know about):
//   1 (ttq 0.1.0): first version: metadata JSON, zstd TorchScript program, per-tensor sections
//                  with raw (optionally zstd) or static-rANS ternary payloads; XXH64 checksums.
inline constexpr uint32_t kVersion = 1;
inline constexpr uint32_t kOldestVersion = 1;
inline constexpr uint64_t kAlignment = 64;
inline constexpr uint64_t kFixedHeaderSize = 48;
inline constexpr uint64_t kSectionEntrySize = 40;

enum class SectionKind : uint32_t { Metadata = 1, Program = 2, Tensor = 3 };
enum class Compression : uint32_t { None = 0, Zstd = 1 };

struct Section {
  SectionKind kind = SectionKind::Tensor;
  Compression compression = Compression::None;
  uint64_t offset = 0;
  uint64_t stored_size = 0;
  uint64_t raw_size = 0;
  uint64_t checksum = 0;  // XXH64 (seed 0) of the stored bytes
};

enum class Encoding { Raw, TernaryRans };
const char* to_string(Encoding e);

struct TensorEntry {
  std::string name;          // qualified name in the module
  bool is_parameter = true;  // else a buffer
  bool requires_grad = false;
  std::vector<int64_t> shape;
  std::string dtype;         // dtype of the restored tensor ("float32", "int64", ...)
  Encoding encoding = Encoding::Raw;
  std::string stored_dtype;  // Raw: the dtype of the stored bytes (float16/bfloat16 for float32)
  uint32_t section = 0;
  // TernaryRans only: the levels {-wn, 0, +wp} and the code counts.
  float wp = 0, wn = 0;
  CodeCounts counts;

  int64_t numel() const;
};

// The one table of the dtypes an archive holds: the name stored in the file, bytes per element,
// and c10::ScalarType's number for it (this header has no LibTorch; a unit test checks the numbers
// and sizes against c10, and formats/archive.cpp maps LibTorch's dtypes through this table).
struct DtypeInfo {
  const char* name;
  size_t size;
  int scalar_type;
};
inline constexpr DtypeInfo kDtypes[] = {
    {"float32", 4, 6}, {"float64", 8, 7}, {"float16", 2, 5}, {"bfloat16", 2, 15}, {"int64", 8, 4},
    {"int32", 4, 3},   {"int16", 2, 2},   {"int8", 1, 1},    {"uint8", 1, 0},     {"bool", 1, 11}};

// Bytes per element of a dtype name ttqz knows; 0 for an unknown name.
size_t dtype_size(const std::string& dtype);

// A validated archive. Points into the caller's bytes, which must outlive it.
struct Archive {
  uint32_t version = 0;
  std::string producer;
  std::vector<Section> sections;
  std::string ttq_json;  // the model's TTQ metadata (the ttq.json of the TorchScript file)
  std::vector<TensorEntry> tensors;
  uint32_t program_section = 1;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

// Validates everything before allocating for it, in a fixed order: size, magic, version, section
// table bounds, file size, header checksum, each section's place (aligned, contiguous, zero
// padding, ending at the end of the file), section checksums, the metadata, every tensor entry
// against its section. Throws a ttq input error with one clear line.
Archive parse(const uint8_t* data, uint64_t size);

// The section's bytes after decompression (exactly raw_size bytes).
std::vector<uint8_t> section_bytes(const Archive& archive, uint32_t index);

// Decodes a ternary tensor's symbols (0 = -wn, 1 = 0, 2 = +wp) and checks them against the entry's
// counts.
std::vector<uint8_t> ternary_symbols(const Archive& archive, const TensorEntry& entry);
// The same decoded straight to float levels {-wn, 0, +wp} into out[numel].
void ternary_values(const Archive& archive, const TensorEntry& entry, float* out);

// What an archive holds and how close it is to the storage limit (for inspect and export).
struct TensorSummary {
  const TensorEntry* entry = nullptr;
  uint64_t stored_bytes = 0;
  double bits_per_weight = 0;  // stored bits / numel
  double entropy_bits = 0;     // ternary only: H of the codes
};
struct Summary {
  std::vector<TensorSummary> tensors;
  uint64_t file_bytes = 0;
  uint64_t program_bytes = 0;   // stored (compressed) TorchScript program
  uint64_t metadata_bytes = 0;
  int64_t ternary_weights = 0;
  uint64_t ternary_bytes = 0;   // stored ternary payloads
  double ternary_entropy_bytes = 0;
  int64_t ternary_bound_bytes = 0;  // the codes' limit with the scales (core/code_counts.h)
  uint64_t other_raw_bytes = 0; // other tensors at their stored width
  // The limit: every ternary layer at its bound plus the other tensors at their stored width.
  double bound_bytes() const { return static_cast<double>(ternary_bound_bytes + other_raw_bytes); }
  double ternary_bits_per_weight() const { return ternary_weights ? 8.0 * ternary_bytes / ternary_weights : 0; }
  double ternary_entropy_bits() const { return ternary_weights ? 8.0 * ternary_entropy_bytes / ternary_weights : 0; }
};
Summary summarize(const Archive& archive);

// Writing: the caller supplies section payloads; tensors' `section` fields index `tensor_payloads`
// (0-based) and are renumbered. zstd-compresses program and raw payloads at `level` when smaller.
struct Payload {
  std::vector<uint8_t> bytes;
  bool compressible = true;  // false for ternary payloads (already entropy coded)
};
void write(std::ostream& out, const std::string& ttq_json, const std::vector<uint8_t>& program,
           std::vector<TensorEntry> tensors, const std::vector<Payload>& tensor_payloads, int level);

}  // namespace ttq::ttqz
