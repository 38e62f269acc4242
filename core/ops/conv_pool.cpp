// ttq::conv2d_affine's max_pool on the int8 path (ops_internal.h's pooled_int8_output): the
// convolution's output computed a band of rows at a time and pooled while it is in cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "core/ops/ops_internal.h"

namespace ttq::ops {
namespace {

// Rows [h0, h1) of this thread's band (channels-last, `width` pixels of `rows` floats a row),
// max-pooled (`pool`: kernel, stride, padding) into rows [p0, p1) of an output from `od`, its row
// p0 (strides `os` as [n, c, h, w]'s, `pool_w` wide); a window's values past the edges are padding,
// left out. The int8 path's values are finite (int32 sums, scaled), so a plain
// max gives aten::max_pool2d's. Built for AVX-512 and AVX2 too, which this file's baseline is not.
// The channels go kChunk at a time, their maxima a vector (GCC's vector extension: a register on
// AVX-512, two on AVX2) kept through the window: a row of maxima in memory, read and written at each
// of the 9 taps, made the pooling a third of the time of ResNet-18's stem convolution under perf, and
// a plain array of 16 GCC kept in 16 scalar registers.
using Chunk = float __attribute__((vector_size(64)));
constexpr int64_t kChunk = sizeof(Chunk) / sizeof(float);

__attribute__((target_clones("avx512f", "avx2", "default"))) void pool_band(
    const float* __restrict band, int64_t h0, int64_t h1, int64_t width, int64_t rows, const int64_t* pool,
    float* __restrict od, const int64_t* os, int64_t p0, int64_t p1, int64_t pool_w) {
  const int64_t k = pool[0], s = pool[1], p = pool[2];
  for (int64_t ph = p0; ph < p1; ++ph) {
    const int64_t y0 = std::max(ph * s - p, h0), y1 = std::min(ph * s - p + k, h1);
    for (int64_t pw = 0; pw < pool_w; ++pw) {
      const int64_t x0 = std::max<int64_t>(pw * s - p, 0), x1 = std::min(pw * s - p + k, width);
      float* o = od + (ph - p0) * os[2] + pw * os[3];
      int64_t r0 = 0;
      for (; r0 + kChunk <= rows; r0 += kChunk) {
        Chunk best = Chunk{} - std::numeric_limits<float>::infinity();
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t x = x0; x < x1; ++x) {
            Chunk chunk;
            std::memcpy(&chunk, band + ((y - h0) * width + x) * rows + r0, sizeof chunk);
            best = chunk > best ? chunk : best;
          }
        for (int64_t r = 0; r < kChunk; ++r) o[(r0 + r) * os[1]] = best[r];
      }
      if (r0 == rows) continue;
      float best[kChunk];  // the last channels, fewer than kChunk
      for (int64_t r = r0; r < rows; ++r) best[r - r0] = -std::numeric_limits<float>::infinity();
      for (int64_t y = y0; y < y1; ++y)
        for (int64_t x = x0; x < x1; ++x) {
          const float* v = band + ((y - h0) * width + x) * rows;
          for (int64_t r = r0; r < rows; ++r) best[r - r0] = std::max(best[r - r0], v[r]);
        }
      for (int64_t r = r0; r < rows; ++r) o[r * os[1]] = best[r - r0];
    }
  }
}

}  // namespace

// The max-pool `pool` ([kernel, stride, padding], square, floor mode) of an int8 convolution's output
// (int8_conv_output's `in` and `rows_int8`), which is computed a band of rows at a time into this
// thread's scratch and pooled while it is in cache: ResNet's stem output, 51 MiB at batch 16, is
// never written out whole. Bands of at most 8 pooled rows, enough for every thread; where a thread
// computes the next band of a sample, the rows both windows take are kept, not computed again.
at::Tensor pooled_int8_output(const Int8Inputs& in, OutputGeometry g, int64_t rows, const float* affine,
                              c10::IntArrayRef pool, at::MemoryFormat format, const RowsInt8& rows_int8, const char* op,
                              float output_step) {
  const int64_t k = pool[0], s = pool[1], p = pool[2];
  TORCH_CHECK(k > 0 && s > 0 && p >= 0 && 2 * p <= k, "ttq::", op,
              ": max_pool needs kernel and stride > 0 and padding at most half the kernel (got ", pool, ")");
  const int64_t pool_h = (g.out_h + 2 * p - k) / s + 1, pool_w = (g.out_w + 2 * p - k) / s + 1;
  TORCH_CHECK(g.out_h + 2 * p >= k && g.out_w + 2 * p >= k, "ttq::", op, ": the output (", g.out_h, "x", g.out_w,
              ") is smaller than the max-pool's kernel");
  const bool channels_last = format == at::MemoryFormat::ChannelsLast, bytes = output_step > 0;
  auto out = bytes ? byte_output(g.batch, rows, pool_h, pool_w, channels_last)
                   : at::empty({g.batch, rows, pool_h, pool_w}, at::TensorOptions(at::kFloat).memory_format(format));
  int64_t bands = std::min(pool_h, std::max((pool_h + 7) / 8, (4 * at::get_num_threads() + g.batch - 1) / g.batch));
  const int64_t band = (pool_h + bands - 1) / bands, values = g.out_w * rows;
  bands = (pool_h + band - 1) / band;
  at::parallel_for(0, g.batch * bands, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scratch, pooled;  // the band's output rows, and pooled ones for bytes
    int64_t held_n = -1, held0 = 0, held1 = 0;  // scratch holds rows [held0, held1) of sample held_n
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / bands, p0 = t % bands * band, p1 = std::min(p0 + band, pool_h);
      const int64_t h0 = std::max<int64_t>(p0 * s - p, 0), h1 = std::min((p1 - 1) * s - p + k, g.out_h);
      scratch.resize(std::max(scratch.size(), static_cast<size_t>((h1 - h0) * values)));
      int64_t from = h0;
      if (held_n == n && h0 >= held0 && h0 < held1) {
        std::memmove(scratch.data(), scratch.data() + (h0 - held0) * values, (held1 - h0) * values * sizeof(float));
        from = held1;
      }
      if (from < h1) {
        Int8Inputs rows_in = in;  // the band's inputs from 0
        const int64_t first = (n * g.out_h + from) * g.out_w;
        rows_in.row += first, rows_in.scale += first;
        Int8Output o = affine_output(affine, rows, rows, 1);
        o.y = scratch.data() + (from - h0) * values;
        rows_int8(rows_in, 0, (h1 - from) * g.out_w, 0, rows, o);
      }
      held_n = n, held0 = h0, held1 = h1;
      if (!bytes) {
        float* const rows_out = out.data_ptr<float>() + n * out.stride(0) + p0 * out.stride(2);
        pool_band(scratch.data(), h0, h1, g.out_w, rows, pool.data(), rows_out, out.strides().data(), p0, p1, pool_w);
        continue;
      }
      // Pooled as floats in the output's order (rows p0 to p1 of a sample), then quantized as the
      // stores quantize: max and rounding commute, but the bytes are those of the floats either way.
      const int64_t count = (p1 - p0) * pool_w * rows, plane = (p1 - p0) * pool_w;
      pooled.resize(std::max(pooled.size(), static_cast<size_t>(count)));
      const int64_t strides[4] = {0, channels_last ? 1 : plane, channels_last ? pool_w * rows : pool_w,
                                  channels_last ? rows : 1};
      pool_band(scratch.data(), h0, h1, g.out_w, rows, pool.data(), pooled.data(), strides, p0, p1,
                pool_w);
      uint8_t* sample = out.data_ptr<uint8_t>() + n * out.stride(0);
      if (channels_last) {
        quantize_int8(selected_path(), pooled.data(), count, 1, output_step, true, sample + p0 * pool_w * rows);
        continue;
      }
      for (int64_t r = 0; r < rows; ++r)
        quantize_int8(selected_path(), pooled.data() + r * plane, plane, 1, output_step, true,
                      sample + r * out.stride(1) + p0 * pool_w);
    }
  });
  return out;
}

}  // namespace ttq::ops
