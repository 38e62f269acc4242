// Little-endian integers in byte buffers, for ttq's binary formats (the .ttqz archive, the
// checkpoint trailer): the same bytes on every host. No LibTorch: ttq_format and the fuzzer use it.
#pragma once
#include <cstdint>

namespace ttq::le {

inline uint32_t read_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t read_u64(const uint8_t* p) { return uint64_t(read_u32(p)) | uint64_t(read_u32(p + 4)) << 32; }

// Appends to a byte container (std::vector<uint8_t>, std::string).
template <class Bytes>
void append_u32(Bytes& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<typename Bytes::value_type>(v >> (8 * i)));
}
template <class Bytes>
void append_u64(Bytes& out, uint64_t v) {
  append_u32(out, static_cast<uint32_t>(v));
  append_u32(out, static_cast<uint32_t>(v >> 32));
}

// Writes in place, into a buffer sized beforehand.
inline void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void store_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace ttq::le
