// core/ops/kernels_int8: the int8 kernels of every instruction set this CPU runs against an exact
// int32 reference (the sums are exact, so every path must give the same floats), on inputs laid out
// as a linear layer and as a convolution's strided taps, with fewer and more inputs than a block.
#include "catch.h"
#include "helpers.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/ops/kernels.h"
#include "core/ops/packed.h"

using namespace ttq::ops;
using ttq::test::runnable_paths;
using ttq::test::ternary_weight;

namespace {

// n inputs of k int8 values, stored for `path` (offset by 128 where it wants), each row `stride` bytes
// apart, steps of 64 bytes: a linear layer's layout.
struct Inputs {
  std::vector<int8_t> q;  // n × k, the values
  std::vector<uint8_t> bytes;
  std::vector<int64_t> row, step;
  std::vector<float> scale;
  int64_t k = 0;
  Int8Inputs view() const { return {bytes.data(), row.data(), step.data(), scale.data(), k}; }
};

Inputs int8_inputs(KernelPath path, int64_t n, int64_t k, int64_t groups, int64_t stride, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto values = torch::randint(-127, 128, {n, k}, gen).to(torch::kInt8).contiguous();
  Inputs in;
  in.k = k;
  in.q.assign(values.data_ptr<int8_t>(), values.data_ptr<int8_t>() + n * k);
  const int64_t steps = (groups + 1) / 2;
  in.bytes.assign(static_cast<size_t>(n * stride + 64), 0x5a);  // bytes past K: anything readable
  for (int64_t i = 0; i < n; ++i) {
    in.row.push_back(i * stride);
    in.scale.push_back(0.01f * static_cast<float>(i + 1));
    for (int64_t j = 0; j < k; ++j)
      in.bytes[static_cast<size_t>(i * stride + j)] = static_cast<uint8_t>(in.q[i * k + j] + (int8_offset(path) ? 128 : 0));
  }
  for (int64_t s = 0; s < steps; ++s) in.step.push_back(64 * s);
  return in;
}

// The byte the next layer's quantization makes of v on a step of 0.05 (q + 128), as Int8Output's
// bytes are to be.
uint8_t next_byte(float v) {
  return static_cast<uint8_t>(static_cast<int>(std::clamp(std::nearbyint(v / 0.05f), -127.0f, 127.0f)) + 128);
}

// An output of those bytes into b, `stride` rows an input.
Int8Output to_bytes(std::vector<uint8_t>& b, int64_t stride) {
  Int8Output out{nullptr, stride, 1};
  out.bytes = b.data(), out.byte_step = 0.05f;
  return out;
}

}  // namespace

TEST_CASE("int8 weights: the larger scale exact, the other within half a step") {
  for (const auto& [wp, wn] : std::vector<std::pair<float, float>>{{0.3f, 0.2f}, {0.05f, 0.9f}, {0.4f, 0.4f}}) {
    const Int8Weights w = int8_weights(wp, wn);
    CHECK(w.step == std::max(wp, wn) / 127);
    CHECK(std::abs(w.pos * w.step - wp) <= w.step / 2);
    CHECK(std::abs(w.neg * w.step + wn) <= w.step / 2);
    CHECK((wp >= wn ? w.pos == 127 : w.neg == -127));
  }
  CHECK(int8_weights(0, 0).step == 1.0f);
}

TEST_CASE("quantize_int8 of every path rounds halves to even, clamps to ±127, and offsets where asked") {
  const std::vector<float> x{0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 300.0f, -300.0f, 0.49f, 10.0f};
  for (const auto path : runnable_paths()) {
    CAPTURE(path_name(path));
    std::vector<uint8_t> q(5), off(5);
    quantize_int8(path, x.data(), 5, 2, 1.0f, false, q.data());  // every second value
    CHECK(std::vector<int>(q.begin(), q.end()) == std::vector<int>{0, 2, uint8_t(-2), uint8_t(-127), 10});
    quantize_int8(path, x.data(), 5, 2, 1.0f, true, off.data());
    CHECK(std::vector<int>(off.begin(), off.end()) == std::vector<int>{128, 130, 126, 1, 138});
    // The same halves and bounds contiguous (AVX-512's own loop, which clamps before it rounds).
    std::vector<uint8_t> all_of_x(x.size());
    quantize_int8(path, x.data(), static_cast<int64_t>(x.size()), 1, 1.0f, false, all_of_x.data());
    CHECK(std::vector<int>(all_of_x.begin(), all_of_x.end()) ==
          std::vector<int>{0, 2, 2, 0, uint8_t(-2), 127, uint8_t(-127), 0, 10});
    // Contiguous values (AVX-512's own loop), 16 at a time and a remainder, against one at a time;
    // the byte past them untouched.
    const auto values = (torch::randn({37}, at::detail::createCPUGenerator(3)) * 40).contiguous();
    const float* v = values.data_ptr<float>();
    for (const bool offset : {false, true}) {
      std::vector<uint8_t> all(38, 7), one(37);
      quantize_int8(path, v, 37, 1, 0.3f, offset, all.data());
      for (int64_t j = 0; j < 37; ++j) quantize_int8(KernelPath::Portable, v + j, 1, 1, 0.3f, offset, &one[j]);
      CHECK(std::vector<uint8_t>(all.begin(), all.end() - 1) == one);
      CHECK(all.back() == 7);
    }
  }
}

TEST_CASE("ternary_rows_int8 of every path equals the exact int32 sums, in linear and strided layouts") {
  // (rows, k, n, stride): k off the 64-byte steps, n below, at and above the blocks of inputs (8, 12),
  // rows that leave remainders of the kernels' row blocks (16, 32); a stride wider than the row
  // (convolution taps); decoded rows beyond the cache's share, met in blocks (96 rows of 2,112 bytes).
  const std::vector<std::array<int64_t, 4>> cases{
      {1, 1, 1, 64},     {5, 7, 3, 64},       {33, 100, 8, 128}, {17, 64, 9, 64},     {64, 256, 20, 256},
      {3, 130, 16, 320}, {96, 1000, 2, 1024}, {7, 65, 40, 192},  {96, 2100, 30, 2112}, {70, 576, 25, 640}};
  for (const auto path : runnable_paths()) {
    for (const auto& [rows, k, n, stride] : cases) {
      CAPTURE(path_name(path), rows, k, n, stride);
      const float wp = 0.3f, wn = 0.2f;
      const auto weight = ternary_weight({rows, k}, wp, wn, static_cast<uint64_t>(rows * k + n));
      const auto signs = weight.sign().to(torch::kInt64).contiguous();
      const Packed p = pack(weight, wp, wn);
      const int64_t groups = packed_groups(k);
      const Int8Weights w = int8_weights(wp, wn);
      const Inputs in = int8_inputs(path, n, k, groups, stride, 5);
      const auto* planes = reinterpret_cast<const uint32_t*>(p.codes.data_ptr<uint8_t>());
      // y[i, r] at i · rows + r (a linear layer's output, channels-last), from two calls splitting
      // the rows as two threads do; z[r, i] at r · n + i (NCHW), with an affine, a floor and a ceiling.
      std::vector<float> y(static_cast<size_t>(n * rows), -1.0f), z(y), scale, shift, floor, ceiling;
      for (int64_t r = 0; r < rows; ++r) {
        scale.push_back(0.5f + 0.01f * static_cast<float>(r));
        shift.push_back(0.1f * static_cast<float>(r % 7) - 0.3f);
        floor.push_back(r % 2 ? 0.0f : -1e30f);
        ceiling.push_back(r % 3 ? 0.5f : 1e30f);
      }
      const int64_t split = rows / 3;
      ternary_rows_int8(path, planes, groups, w, in.view(), 0, n, 0, split, {y.data(), rows, 1});
      ternary_rows_int8(path, planes, groups, w, in.view(), 0, n, split, rows, {y.data(), rows, 1});
      ternary_rows_int8(path, planes, groups, w, in.view(), 0, n, 0, rows,
                        {z.data(), 1, n, scale.data(), shift.data(), floor.data(), ceiling.data()});
      const auto* s = signs.data_ptr<int64_t>();
      int64_t mismatches = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          int32_t dot = 0;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t sign = s[r * k + j];
            dot += (sign > 0 ? w.pos : sign < 0 ? w.neg : 0) * int32_t(in.q[i * k + j]);
          }
          const float v = in.scale[i] * w.step * static_cast<float>(dot);
          const float product = scale[r] * v;  // apart, as the kernels compute it: no fused multiply-add
          mismatches += y[i * rows + r] != v;
          mismatches += z[r * n + i] != std::min(std::max(product + shift[r], floor[r]), ceiling[r]);
        }
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("dense_rows_int8 of every path equals the exact int32 sums through its table of fours, as floats and bytes") {
  // (rows, k, n): a first layer's 147 weights (7 kernel rows of 21 and 3 zeros: 168), rows that leave
  // remainders of 16 and 64, inputs below and above the blocks, and fours scattered in the input (a
  // gap after each pair, as taps in an image).
  const std::vector<std::array<int64_t, 3>> cases{{1, 3, 1}, {20, 21, 7}, {64, 168, 13}, {33, 100, 40}, {80, 4, 9}};
  for (const auto path : runnable_paths()) {
    for (const auto& [rows, k, n] : cases) {
      CAPTURE(path_name(path), rows, k, n);
      auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(rows + k + n));
      const auto weights = torch::randint(-127, 128, {rows, k}, gen).to(torch::kInt8).contiguous();
      const auto values = torch::randint(-127, 128, {n, k}, gen).to(torch::kInt8).contiguous();
      const int8_t* wd = weights.data_ptr<int8_t>();
      const int8_t* q = values.data_ptr<int8_t>();
      const int64_t fours = (k + 3) / 4, stride = 4 * fours + 8 * (fours / 2) + 8;
      std::vector<int64_t> four, row;
      for (int64_t f = 0; f < fours; ++f) four.push_back(4 * f + 8 * (f / 2));
      std::vector<uint8_t> bytes(static_cast<size_t>(n * stride + 64), 0x5a);  // past K: anything
      std::vector<float> scale;
      for (int64_t i = 0; i < n; ++i) {
        row.push_back(i * stride);
        scale.push_back(0.01f * static_cast<float>(i + 1));
        for (int64_t j = 0; j < k; ++j)
          bytes[static_cast<size_t>(i * stride + four[j / 4] + j % 4)] =
              static_cast<uint8_t>(q[i * k + j] + (int8_offset(path) ? 128 : 0));
      }
      const Int8Inputs in{bytes.data(), row.data(), nullptr, scale.data(), k, four.data()};
      const DenseInt8Rows dense = dense_int8_rows(path, wd, rows, k);
      // y[i, r] from two calls splitting the rows at a multiple of a block's lanes; b[i, r] the
      // next layer's bytes of y on a step of 0.05.
      std::vector<float> y(static_cast<size_t>(n * rows), -1.0f);
      std::vector<uint8_t> b(static_cast<size_t>(n * rows), 0);
      const int64_t split = rows / 2 / 16 * 16;
      dense_rows_int8(path, dense, in, 0, n, 0, split, {y.data(), rows, 1});
      dense_rows_int8(path, dense, in, 0, n, split, rows, {y.data(), rows, 1});
      dense_rows_int8(path, dense, in, 0, n, 0, rows, to_bytes(b, rows));
      int64_t mismatches = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          int32_t dot = 0;
          for (int64_t j = 0; j < k; ++j) dot += int32_t(wd[r * k + j]) * int32_t(q[i * k + j]);
          const float v = scale[i] * 1.0f * static_cast<float>(dot);
          mismatches += y[i * rows + r] != v;
          mismatches += b[i * rows + r] != next_byte(v);
        }
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("depthwise_rows_int8 of every path equals the exact int32 sums of each channel's taps, as floats and bytes") {
  // (channels, taps, n): MobileNetV2's 3x3 (9 taps, held in registers on AVX-512) at channel counts
  // off 16, a 5x5, channel ranges split as threads split them, and inputs past two of AVX-512's
  // tiles of 64 (an odd count: its pairs of inputs end on one).
  const std::vector<std::array<int64_t, 3>> cases{{16, 9, 5},  {20, 9, 7}, {144, 9, 3},
                                                  {24, 25, 4}, {3, 9, 2},  {48, 9, 151}};
  for (const auto path : runnable_paths()) {
    for (const auto& [channels, taps, n] : cases) {
      CAPTURE(path_name(path), channels, taps, n);
      const float wp = 0.5f, wn = 0.7f;
      const auto weight = ternary_weight({channels, taps}, wp, wn, static_cast<uint64_t>(channels + taps));
      const auto signs = weight.sign().to(torch::kInt64).contiguous();
      const Packed p = pack(weight, wp, wn);
      const Int8Weights w = int8_weights(wp, wn);
      const auto* planes = reinterpret_cast<const uint32_t*>(p.codes.data_ptr<uint8_t>());
      // Input i's tap t: channels bytes at i · stride + tap[t] (taps of an image row, a gap between).
      auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(n));
      const auto values = torch::randint(-127, 128, {n, taps, channels}, gen).to(torch::kInt8).contiguous();
      const int8_t* q = values.data_ptr<int8_t>();
      const int64_t stride = taps * (channels + 8);
      std::vector<int64_t> tap, row;
      for (int64_t t = 0; t < taps; ++t) tap.push_back(t * (channels + 8));
      std::vector<uint8_t> bytes(static_cast<size_t>(n * stride + 64), 0x5a);
      std::vector<float> scale;
      for (int64_t i = 0; i < n; ++i) {
        row.push_back(i * stride);
        scale.push_back(0.02f * static_cast<float>(i + 1));
        for (int64_t t = 0; t < taps; ++t)
          for (int64_t c = 0; c < channels; ++c)
            bytes[static_cast<size_t>(i * stride + tap[t] + c)] =
                static_cast<uint8_t>(q[(i * taps + t) * channels + c] + (int8_offset(path) ? 128 : 0));
      }
      const Int8Inputs in{bytes.data(), row.data(), nullptr, scale.data(), taps};
      std::vector<float> y(static_cast<size_t>(n * channels), -1.0f);
      std::vector<uint8_t> b(static_cast<size_t>(n * channels), 0);
      const int64_t split = channels / 2 / 16 * 16;
      depthwise_rows_int8(path, planes, packed_groups(taps), w, tap.data(), taps, in, 0, n, 0, split,
                          {y.data(), channels, 1});
      depthwise_rows_int8(path, planes, packed_groups(taps), w, tap.data(), taps, in, 0, n, split, channels,
                          {y.data(), channels, 1});
      depthwise_rows_int8(path, planes, packed_groups(taps), w, tap.data(), taps, in, 0, n, 0, channels,
                          to_bytes(b, channels));
      const auto* s = signs.data_ptr<int64_t>();
      int64_t mismatches = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < channels; ++c) {
          int32_t dot = 0;
          for (int64_t t = 0; t < taps; ++t) {
            const int64_t sign = s[c * taps + t];
            dot += (sign > 0 ? w.pos : sign < 0 ? w.neg : 0) * int32_t(q[(i * taps + t) * channels + c]);
          }
          const float v = scale[i] * w.step * static_cast<float>(dot);
          mismatches += y[i * channels + c] != v;
          mismatches += b[i * channels + c] != next_byte(v);
        }
      CHECK(mismatches == 0);
    }
  }
}
