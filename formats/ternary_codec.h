// Entropy coding of ternary codes: a static rANS coder whose model is the layer's own -/0/+
// frequencies, so a tensor costs n·H(codes) bits plus 14 bytes (the frequencies and the two final
// state). zstd over 2-bit or base-3 packings pays for a Huffman table per block and rounds each
// packed byte to whole bits; rANS does neither (see scripts/bench_export.sh for the comparison).
// Plain C++: no LibTorch, so the fuzzer can link it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ttq {

// Symbols: 0 = negative (-Wn), 1 = zero, 2 = positive (+Wp).
enum : uint8_t { kSymbolNeg = 0, kSymbolZero = 1, kSymbolPos = 2 };

// Encodes n symbols (each < 3). Deterministic.
std::vector<uint8_t> encode_ternary(const uint8_t* symbols, size_t n);

// Decodes exactly n symbols from `size` bytes into `out`. Throws an input error on any
// inconsistency (bad frequency table, stream too short or too long, wrong final state), so
// corrupt input never reads or writes out of bounds.
void decode_ternary(const uint8_t* data, size_t size, size_t n, uint8_t* out);

// The same, writing levels[symbol] straight into `out` (restore's hot path: no symbol buffer) and
// counting the symbols into counts[3].
void decode_ternary_levels(const uint8_t* data, size_t size, size_t n, const float levels[3], float* out,
                           int64_t counts[3]);

}  // namespace ttq
