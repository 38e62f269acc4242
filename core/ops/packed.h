// The packed form of a ternary weight, shared by the operators (libttq_ops.so) and by ttq itself.
//
// A weight of shape [rows, ...] is seen as a matrix [rows, K] (K: the product of the other
// dimensions, as a convolution's im2col sees it). Each row is stored as groups of 32 weights; a
// group is two little-endian uint32 bit planes, positives then negatives (bit i: weight 32g + i),
// 8 bytes per 32 weights: 2 bits a weight, with the bits past K zero. The values are +Wp where the
// positive bit is set, -Wn where the negative bit is, 0 elsewhere; the scales travel beside the
// codes as a float tensor [Wp, Wn].
//
// Two planes rather than 2-bit fields: a plane is directly a SIMD lane mask (AVX-512's k registers),
// so the kernels add inputs under masks instead of decoding codes.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace ttq::ops {

inline constexpr int64_t kGroup = 32;
inline int64_t packed_groups(int64_t k) { return (k + kGroup - 1) / kGroup; }
// Bytes of the packed codes of `shape`.
int64_t packed_bytes(const std::vector<int64_t>& shape);

struct Packed {
  torch::Tensor codes;   // uint8 [rows, groups * 8]
  torch::Tensor scales;  // float32 [2]: Wp, Wn
};

// Packs a weight whose values are +wp, 0 or -wn (the layer's scales, from ttq's metadata: they may
// be negative, so they cannot be read off the values); throws c10::Error naming a value that is
// none of them.
Packed pack(const torch::Tensor& weight, float wp, float wn);
// Rows r0 <= r < r1 of the [rows, k] matrix as float32 into dst (row-major, k floats a row).
void decode_rows(const torch::Tensor& codes, int64_t k, float wp, float wn, int64_t r0, int64_t r1, float* dst);
// The float32 weight of `shape` again, bit-exact.
torch::Tensor unpack(const torch::Tensor& codes, const torch::Tensor& scales, const std::vector<int64_t>& shape);
// c10::Error unless codes and scales fit `shape` (dtype, size, device): cheap, every call.
void check_packed(const torch::Tensor& codes, const torch::Tensor& scales, const std::vector<int64_t>& shape);
// c10::Error unless the bit planes are disjoint and the bits past K are zero: one pass over the codes,
// when a model is loaded or unpacked.
void check_packed_bits(const torch::Tensor& codes, const std::vector<int64_t>& shape);

// A float weight [rows, ...] rounded to 8 bits per row (output channel), the one rule of the layers
// an int8 model keeps float (ttq::conv2d_affine's per call, ttq::linear_8bit's at export): step
// max |w| / 127 (the smallest normal float for a row of zeros), bytes round(w / step), halves to
// even. Returns the bytes [rows, K], each row `align`-byte multiples apart with zeros past K (a
// view), and the steps [rows].
std::pair<torch::Tensor, torch::Tensor> eight_bit_rows(const torch::Tensor& weight, int64_t align = 1);

// Whether ttq::conv2d_int8 runs a layer of this weight shape [out, in/groups, kh, kw] on the int8
// kernels (every layer but a grouped one whose last block of groups would read past its input:
// conv_int8.cpp), else its float path.
bool conv_runs_int8(const std::vector<int64_t>& shape, int64_t groups);

// Calibration of static int8 steps (ttq export --calibrate): while on, every ttq::linear_int8 and
// ttq::conv2d_int8 given an input_step raises it to the largest step its inputs need (max |x| / 127)
// and computes as without one. Process-wide: calibrate with one model at a time.
void set_calibrating(bool on);

}  // namespace ttq::ops
