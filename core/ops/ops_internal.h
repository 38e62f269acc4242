// Between the operators' files: ops.cpp (the linear operators, the scratch buffers, int8 steps, the
// registration), conv.cpp (the convolution operators), conv_int8.cpp (the int8 convolutions) and
// conv_pool.cpp (a convolution's max-pool in bands).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "core/ops/kernels.h"

namespace ttq::ops {

std::vector<int64_t> to_vector(c10::IntArrayRef a);
// c10::Error unless the input is a float32 CPU tensor (or, `bytes_too`, a uint8 one).
void check_input(const at::Tensor& input, const char* op, bool bytes_too = false);
// The one float32 value of an int8 step tensor (input_step, output_step: finite, >= 0), else c10::Error.
float* step_value(const at::Tensor& step, const char* name, const char* op);
// The layer's scale i (0: wp, 1: wn).
float scale(const at::Tensor& scales, int i);
// This thread's scratch for decoded weights, at least `numel` floats: one buffer the size of the
// largest it has held, reused by every call (fresh allocations of that size would cost page faults
// on every call). Valid until the thread's next use.
at::Tensor weight_scratch(int64_t numel);
// The [rows, k] weight as float32 in this thread's scratch, decoded by all threads.
at::Tensor decoded(const at::Tensor& codes, const at::Tensor& scales, int64_t k, int64_t rows);
// This thread's scratch for an int8 operator's quantized inputs, at least `bytes` long: one buffer
// reused by every call. Valid until the thread's next int8 call.
uint8_t* input_scratch(int64_t bytes);
// The int8 step of each of the `count` slices of x over `dims`: the layer's calibrated step for all
// (input_step > 0: static), else each slice's own (dynamic). While calibrating, the dynamic steps
// are taken and input_step is raised to the largest of them. A uint8 x (the bytes of the layer
// before, made with this layer's step) needs a calibrated input_step.
at::Tensor input_steps(const at::Tensor& x, c10::IntArrayRef dims, int64_t count,
                       const c10::optional<at::Tensor>& input_step, const char* op);

// Values stored with `affine` (rows [scale; shift; floor; ceiling], or none), input i's row r at
// i · input_stride + r · row_stride of the output y or bytes the caller sets (conv.cpp).
Int8Output affine_output(const float* affine, int64_t rows, int64_t input_stride, int64_t row_stride);

// An int8 convolution's output sizes, and its rows of the int8 kernels (ternary_rows_int8 or
// dense_rows_int8 with their weights): rows_int8(in, i0, i1, r0, r1, out).
struct OutputGeometry {
  int64_t batch, out_h, out_w;
};
using RowsInt8 = std::function<void(const Int8Inputs&, int64_t, int64_t, int64_t, int64_t, const Int8Output&)>;

// The max-pool `pool` ([kernel, stride, padding], square, floor mode) of an int8 convolution's
// output, computed a band of rows at a time (conv_pool.cpp); with an output_step, its bytes on that
// step (byte_output's).
at::Tensor pooled_int8_output(const Int8Inputs& in, OutputGeometry g, int64_t rows, const float* affine,
                              c10::IntArrayRef pool, at::MemoryFormat format, const RowsInt8& rows_int8, const char* op,
                              float output_step);

// An int8 layer's output bytes [batch, rows, height, width], channels-last or not, followed by 64
// bytes more that a kernel of the next layer may read (conv_int8.cpp).
at::Tensor byte_output(int64_t batch, int64_t rows, int64_t height, int64_t width, bool channels_last);

// The float path's convolution (groups 1) on oneDNN with the weight decoded into the layout its
// kernel reads (conv_onednn.cpp); an undefined tensor where it cannot take the call.
at::Tensor conv2d_onednn(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                         c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation);

// The convolution operators (conv.cpp), as ops.cpp registers them.
at::Tensor conv2d(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales, c10::IntArrayRef shape,
                  const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                  c10::IntArrayRef dilation, int64_t groups);
at::Tensor conv2d_int8(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                       c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       const c10::optional<at::Tensor>& input_step, const c10::optional<at::Tensor>& out_affine,
                       const c10::optional<at::Tensor>& output_step, const c10::optional<at::Tensor>& residual,
                       const c10::optional<at::Tensor>& residual_step, const c10::optional<at::Tensor>& clamp);
at::Tensor conv2d_affine(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         const at::Tensor& out_affine, const c10::optional<at::Tensor>& input_step,
                         c10::IntArrayRef max_pool, const c10::optional<at::Tensor>& clamp,
                         const c10::optional<at::Tensor>& weight_step, const c10::optional<at::Tensor>& output_step);

}  // namespace ttq::ops
