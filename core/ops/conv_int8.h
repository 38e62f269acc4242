// The int8 convolutions (conv_int8.cpp), as the operators of conv.cpp call them once they have
// checked their arguments.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/ops/conv_affine.h"
#include "core/ops/kernels.h"

namespace ttq::ops {

// An int8 convolution's geometry: each sample a zero-padded NHWC image of `image` bytes, each
// output pixel a row of the int8 kernels. c10::Error where the input does not fit the layer.
struct Int8Conv {
  int64_t batch, cin, padded_w, out_h, out_w, image;
};
Int8Conv int8_conv(const at::Tensor& input, int64_t cin, int64_t kh, int64_t kw, c10::IntArrayRef stride,
                   c10::IntArrayRef padding, c10::IntArrayRef dilation, const char* op);

// Each output pixel's first tap in g's zero-padded images (its row of the int8 kernels) and its
// sample's int8 step.
struct PixelRows {
  std::unique_ptr<int64_t[]> row;
  std::unique_ptr<float[]> step;
};
PixelRows pixel_rows(const Int8Conv& g, c10::IntArrayRef stride, const float* sample_step);

// An int8 convolution's output [batch, rows, out_h, out_w]: bytes with an output_step (byte_output),
// else float32.
at::Tensor int8_output(const Int8Conv& g, int64_t rows, float output_step, bool channels_last);

// A residual the stores add (Int8Output's), in the output's sizes and layout: floats, or bytes with
// their step.
struct Int8Residual {
  const float* floats = nullptr;
  const uint8_t* bytes = nullptr;
  float step = 0;
};

// Where `out` (int8_output's) stores, from `at`: input i's row r at i · input_stride + r ·
// row_stride, with the affine (rows [scale; shift; floor; ceiling], or none) and the residual.
Int8Output stored_at(const at::Tensor& out, const float* affine, int64_t rows, float output_step,
                     const Int8Residual& residual, int64_t at, int64_t input_stride, int64_t row_stride);

// A layer's weight in 8 bits a row, [rows, cin/groups · kh · kw] in (c, y, x) order, and each row's
// step [rows].
using EightBitWeight = std::function<std::pair<at::Tensor, at::Tensor>()>;

// An int8 convolution with 8-bit weights (eight_bit's, made of `sources` on the layer's first call
// and kept while they are unchanged), their steps joining the affine's scale (checked_affine's, or
// an identity). With a max_pool ([kernel, stride, padding]) its pooling; with an output_step its
// bytes for the next layer; a residual added as each value is stored. Groups as conv_runs_int8 takes
// them.
at::Tensor conv2d_dense_int8(const at::Tensor& input, const std::vector<at::Tensor>& sources,
                             const EightBitWeight& eight_bit, c10::IntArrayRef shape, int64_t groups,
                             const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation, Affine affine, const c10::optional<at::Tensor>& input_step,
                             c10::IntArrayRef max_pool, const char* op, float output_step = 0,
                             Int8Residual residual = {});

// ttq::conv2d_int8 of a layer conv_runs_int8 takes, its arguments checked: the ternary rows on their
// 64-byte steps, depthwise taps, or as bytes on the dense kernels.
at::Tensor ternary_conv2d_int8(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                               c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                               const c10::optional<at::Tensor>& input_step, Affine affine, float output_step,
                               Int8Residual residual);

// A depthwise layer as depthwise_from_bytes runs it: its weights tap-major for all its channels
// (depthwise_weights), its kernel, and where each tap lies from a pixel's first in a zero-padded
// image (int8_conv's).
struct DepthwiseLayer {
  const float* weights;
  Int8Weights w;
  const int64_t* padded_tap;
  int64_t kh, kw;
};

// Whether a depthwise layer's input x can be read where it lies (conv_depthwise.cpp): the layer
// before's bytes (uint8, channels-last, whole, the offset bytes the kernels take), and more pixels
// than channels.
bool depthwise_reads_bytes(const at::Tensor& x, const Int8Conv& g, int64_t rows, KernelPath path);
// That layer's output, as int8_conv_output stores it (channels-last), its inside pixels read from
// the input and its edge pixels from a padded image of only what they reach.
at::Tensor depthwise_from_bytes(const at::Tensor& input, const Int8Conv& g, const DepthwiseLayer& layer,
                                c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                const c10::optional<at::Tensor>& input_step, const float* affine, float output_step,
                                Int8Residual residual);

}  // namespace ttq::ops
