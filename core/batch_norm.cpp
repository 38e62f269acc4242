#include "core/batch_norm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/batch_norm_native.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "core/ops/kernels.h"

namespace ttq {
namespace {

// Channels-last rows summed in float before the blocks are summed in double: 128 rows of up to
// 2048 channels stay in the first two cache levels.
constexpr int64_t kRowsPerBlock = 128;

// A 4-D tensor as blocks of values per channel: channels-last, `rows` (N·H·W) rows of `channels`
// values, cut into blocks of kRowsPerBlock rows; contiguous, one image per block, a plane of
// `plane` (H·W) values per channel.
struct View {
  bool bf16 = false, channels_last = false;
  int64_t channels = 0, rows = 0, plane = 0, blocks = 0;
};

View view_of(const at::Tensor& x) {  // x contiguous in one of the two formats
  View v;
  v.bf16 = x.scalar_type() == at::kBFloat16;
  v.channels_last = !x.is_contiguous();
  v.channels = x.size(1);
  v.plane = x.size(2) * x.size(3);
  v.rows = x.size(0) * v.plane;
  v.blocks = v.channels_last ? (v.rows + kRowsPerBlock - 1) / kRowsPerBlock : x.size(0);
  return v;
}

// The kinds of pass: per-channel sums of x, of (x - mean)², of dy and dy·(x - mean); outputs
// (x - mean)·a + d (the normalized output) and dy·a + (x - mean)·b + d (the input's gradient).
enum Pass { kSum, kSquaredDeviation, kGradientSums, kNormalize, kInputGradient };

// Per channel: the mean and the coefficients a, b, d of the writing passes.
struct Coefficients {
  const float* mean;
  const float* a;
  const float* b;
  const float* d;
};

// The passes run in AVX-512 only (the clone GCC made of this vector code for AVX2 ran slower than
// LibTorch's own kernels: elsewhere those run, batch_norm_training_applies says); their helpers
// are compiled for it too, and inlined.
#define TTQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define TTQ_INLINE __attribute__((always_inline)) TTQ_AVX512 inline

// 16 floats, one AVX-512 register (GCC's vector extensions: plain arithmetic, with the
// instructions left to the compiler). A pass loads values as `L`: a float, one at a time (the
// channels or positions past the last 16), or a V, 16 at a time.
typedef float V __attribute__((vector_size(64)));
typedef uint32_t VBits __attribute__((vector_size(64)));
typedef int32_t VMask __attribute__((vector_size(64)));
typedef uint16_t VHalf __attribute__((vector_size(32)));

template <typename L>
TTQ_INLINE L load(const float* p) {
  L v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename L>
TTQ_INLINE L load(const uint16_t* p) {  // a bfloat16 is a float's upper half
  if constexpr (std::is_same_v<L, float>) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  } else {
    VHalf h;
    std::memcpy(&h, p, sizeof h);
    return reinterpret_cast<V>(__builtin_convertvector(h, VBits) << 16);
  }
}
TTQ_INLINE void store(float* p, float v) { *p = v; }
TTQ_INLINE void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
TTQ_INLINE void store(uint16_t* p, float v) {  // c10::BFloat16's rounding: to nearest even, NaN kept
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  *p = v != v ? uint16_t{0x7FC0} : static_cast<uint16_t>(bits >> 16);
}
TTQ_INLINE void store(uint16_t* p, V v) {
  VBits bits = reinterpret_cast<VBits>(v);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  const VMask nan = v != v;
  const VHalf h = __builtin_convertvector(nan ? VBits{} + 0x7FC0u : bits >> 16, VHalf);
  std::memcpy(p, &h, sizeof h);
}

// One element's (or 16 elements') terms of the summing passes.
template <Pass P, typename L>
TTQ_INLINE void add_terms(L x, L dy, L mean, L& s1, L& s2) {
  if constexpr (P == kSum) {
    s1 += x;
  } else if constexpr (P == kSquaredDeviation) {
    s1 += (x - mean) * (x - mean);
  } else {
    s1 += dy;
    s2 += dy * (x - mean);
  }
}

template <Pass P, typename L>
TTQ_INLINE L output(L x, L dy, L mean, L a, L b, L d) {
  if constexpr (P == kNormalize) return (x - mean) * a + d;
  else return dy * a + (x - mean) * b + d;
}

// Channels-last rows [r0, r1) of channels [c0, c0 + width(L)), down the rows: the sums stay in
// registers, two sets of them (even and odd rows) so that an addition need not wait for the last.
template <Pass P, typename L, typename T>
TTQ_INLINE void add_row(const T* x, const T* dy, int64_t at, L mean, L& s1, L& s2) {
  add_terms<P>(load<L>(x + at), P == kGradientSums ? load<L>(dy + at) : L{}, mean, s1, s2);
}

template <Pass P, typename L, typename T>
TTQ_INLINE void sum_column(const T* x, const T* dy, int64_t r0, int64_t r1, int64_t channels, int64_t c0,
                           const float* mean, float* s1, float* s2) {
  L m = P == kSum ? L{} : load<L>(mean + c0), even1{}, even2{}, odd1{}, odd2{};
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    add_row<P>(x, dy, r * channels + c0, m, even1, even2);
    add_row<P>(x, dy, (r + 1) * channels + c0, m, odd1, odd2);
  }
  if (r < r1) add_row<P>(x, dy, r * channels + c0, m, even1, even2);
  store(s1 + c0, load<L>(s1 + c0) + even1 + odd1);
  store(s2 + c0, load<L>(s2 + c0) + even2 + odd2);
}

// One contiguous plane: 16 running sums (a vector's lanes), added in order at the end.
template <Pass P, typename T>
TTQ_INLINE void sum_plane(const T* x, const T* dy, int64_t plane, float mean, float& s1, float& s2) {
  V l1{}, l2{};
  int64_t i = 0;
  for (; i + 16 <= plane; i += 16)
    add_terms<P, V>(load<V>(x + i), P == kGradientSums ? load<V>(dy + i) : V{}, V{} + mean, l1, l2);
  float t1 = 0.0f, t2 = 0.0f;
  for (; i < plane; ++i)
    add_terms<P, float>(load<float>(x + i), P == kGradientSums ? load<float>(dy + i) : 0.0f, mean, t1, t2);
  for (int l = 0; l < 16; ++l) t1 += l1[l], t2 += l2[l];
  s1 += t1, s2 += t2;
}

template <Pass P, typename T>
TTQ_INLINE void sum_block(const View& v, const T* x, const T* dy, int64_t block, const float* mean, float* s1,
                          float* s2) {
  if (v.channels_last) {
    const int64_t r0 = block * kRowsPerBlock, r1 = std::min(v.rows, r0 + kRowsPerBlock);
    int64_t c = 0;
    for (; c + 16 <= v.channels; c += 16) sum_column<P, V>(x, dy, r0, r1, v.channels, c, mean, s1, s2);
    for (; c < v.channels; ++c) sum_column<P, float>(x, dy, r0, r1, v.channels, c, mean, s1, s2);
    return;
  }
  for (int64_t c = 0; c < v.channels; ++c) {
    const int64_t at = (block * v.channels + c) * v.plane;
    sum_plane<P>(x + at, dy + at, v.plane, P == kSum ? 0.0f : mean[c], s1[c], s2[c]);
  }
}

// Output element `at` (16 of them for a V) of channel c (c to c + 15), coefficients loaded as L.
template <Pass P, typename L, typename T>
TTQ_INLINE void write_at(const T* x, const T* dy, T* out, int64_t at, L mean, L a, L b, L d) {
  store(out + at, output<P, L>(load<L>(x + at), P == kInputGradient ? load<L>(dy + at) : L{}, mean, a, b, d));
}

template <Pass P, typename L>
TTQ_INLINE L b_row(const Coefficients& k, int64_t c) {  // the b row is the input gradient's only
  return P == kNormalize ? L{} : load<L>(k.b + c);
}

template <Pass P, typename T>
TTQ_INLINE void write_block(const View& v, const T* x, const T* dy, T* out, int64_t block, const Coefficients& k) {
  if (v.channels_last) {
    const int64_t r0 = block * kRowsPerBlock, r1 = std::min(v.rows, r0 + kRowsPerBlock), n = v.channels;
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
      const V mean = load<V>(k.mean + c), a = load<V>(k.a + c), b = b_row<P, V>(k, c), d = load<V>(k.d + c);
      for (int64_t r = r0; r < r1; ++r) write_at<P, V>(x, dy, out, r * n + c, mean, a, b, d);
    }
    for (; c < n; ++c)
      for (int64_t r = r0; r < r1; ++r)
        write_at<P, float>(x, dy, out, r * n + c, k.mean[c], k.a[c], b_row<P, float>(k, c), k.d[c]);
    return;
  }
  for (int64_t c = 0; c < v.channels; ++c) {
    const int64_t at = (block * v.channels + c) * v.plane, end = at + v.plane;
    const float mean = k.mean[c], a = k.a[c], b = b_row<P, float>(k, c), d = k.d[c];
    int64_t i = at;
    for (; i + 16 <= end; i += 16) write_at<P, V>(x, dy, out, i, V{} + mean, V{} + a, V{} + b, V{} + d);
    for (; i < end; ++i) write_at<P, float>(x, dy, out, i, mean, a, b, d);
  }
}

// One block of a pass, for either dtype.
template <Pass P>
TTQ_AVX512 void sum_avx512(const View& v, const void* x, const void* dy, int64_t block, const float* mean, float* s1,
                           float* s2) {
  if (v.bf16)
    sum_block<P>(v, static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(dy), block, mean, s1, s2);
  else
    sum_block<P>(v, static_cast<const float*>(x), static_cast<const float*>(dy), block, mean, s1, s2);
}

template <Pass P>
TTQ_AVX512 void write_avx512(const View& v, const void* x, const void* dy, void* out, int64_t block,
                             const Coefficients& k) {
  if (v.bf16)
    write_block<P>(v, static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(dy), static_cast<uint16_t*>(out),
                   block, k);
  else
    write_block<P>(v, static_cast<const float*>(x), static_cast<const float*>(dy), static_cast<float*>(out), block, k);
}

// Per-channel sums of a pass over every block, in double, in block order (any thread count).
template <Pass P>
std::vector<double> channel_sums(const View& v, const void* x, const void* dy, const std::vector<float>& mean,
                                 std::vector<double>* second = nullptr) {
  std::vector<float> s1(v.blocks * v.channels, 0.0f), s2(s1.size(), 0.0f);  // s2: kGradientSums' second sum
  at::parallel_for(0, v.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      sum_avx512<P>(v, x, dy, b, mean.data(), s1.data() + b * v.channels, s2.data() + b * v.channels);
  });
  std::vector<double> total(v.channels, 0.0);
  if (second) second->assign(v.channels, 0.0);
  for (int64_t b = 0; b < v.blocks; ++b)
    for (int64_t c = 0; c < v.channels; ++c) {
      total[c] += s1[b * v.channels + c];
      if (second) (*second)[c] += s2[b * v.channels + c];
    }
  return total;
}

template <Pass P>
void write_all(const View& v, const void* x, const void* dy, void* out, const Coefficients& k) {
  at::parallel_for(0, v.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) write_avx512<P>(v, x, dy, out, b, k);
  });
}

at::MemoryFormat format_of(const at::Tensor& x) {
  return x.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
}

float value_or(const at::Tensor& t, int64_t c, float otherwise) {
  return t.defined() ? t.data_ptr<float>()[c] : otherwise;
}

// A batch's per-channel mean and 1/sqrt(var + eps), and its biased variance; none where a float
// sum overflowed (values past ~1e19, whose squares float cannot hold; LibTorch sums float32 inputs
// in double).
struct Statistics {
  at::Tensor mean, invstd;  // float32 [C]
  std::vector<double> variance;
};

std::optional<Statistics> batch_statistics(const at::Tensor& x, double eps) {
  const View v = view_of(x);
  const double count = static_cast<double>(v.rows);  // values per channel
  std::vector<float> mean;
  for (const double sum : channel_sums<kSum>(v, x.data_ptr(), nullptr, {}))
    mean.push_back(static_cast<float>(sum / count));
  Statistics s{at::tensor(at::ArrayRef<float>(mean)), at::empty({v.channels}, at::kFloat), {}};
  for (const double squares : channel_sums<kSquaredDeviation>(v, x.data_ptr(), nullptr, mean)) {
    if (!std::isfinite(squares)) return std::nullopt;
    s.variance.push_back(squares / count);
  }
  for (int64_t c = 0; c < v.channels; ++c) {
    if (!std::isfinite(mean[c])) return std::nullopt;
    s.invstd.data_ptr<float>()[c] = static_cast<float>(1.0 / std::sqrt(s.variance[c] + eps));
  }
  return s;
}

// PyTorch's update: momentum times the batch's (unbiased variance) plus (1 - momentum) times the old.
void update_running(const Statistics& s, int64_t count, double momentum, const at::Tensor& running_mean,
                    const at::Tensor& running_var) {
  for (int64_t c = 0; c < s.mean.numel(); ++c) {
    if (running_mean.defined()) {
      float& rm = running_mean.data_ptr<float>()[c];
      rm = static_cast<float>(momentum * s.mean.data_ptr<float>()[c] + (1.0 - momentum) * rm);
    }
    if (running_var.defined()) {
      float& rv = running_var.data_ptr<float>()[c];
      const double unbiased = s.variance[c] * static_cast<double>(count) / static_cast<double>(count - 1);
      rv = static_cast<float>(momentum * unbiased + (1.0 - momentum) * rv);
    }
  }
}

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The output and the gradients, given the batch's statistics (float32 [C] mean and invstd).
class BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd) {
    const View v = view_of(x);
    std::vector<float> a(v.channels), d(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) {
      a[c] = invstd.data_ptr<float>()[c] * value_or(weight, c, 1.0f);
      d[c] = value_or(bias, c, 0.0f);
    }
    auto y = at::empty(x.sizes(), x.options().memory_format(format_of(x)));
    write_all<kNormalize>(v, x.data_ptr(), nullptr, y.data_ptr(), {mean.data_ptr<float>(), a.data(), nullptr, d.data()});
    ctx->save_for_backward({x, weight, mean, invstd});
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const auto format = format_of(x);
    const auto dy = grads[0].to(x.scalar_type()).contiguous(format);
    const View v = view_of(x);
    const double count = static_cast<double>(v.rows);
    const std::vector<float> mean(saved[2].data_ptr<float>(), saved[2].data_ptr<float>() + v.channels);
    const float* invstd = saved[3].data_ptr<float>();
    std::vector<double> dy_x;  // Σ dy·(x - mean)
    const std::vector<double> dy_sum = channel_sums<kGradientSums>(v, x.data_ptr(), dy.data_ptr(), mean, &dy_x);
    std::vector<float> a(v.channels), b(v.channels), d(v.channels);
    auto grad_weight = at::empty({v.channels}, at::kFloat), grad_bias = at::empty({v.channels}, at::kFloat);
    for (int64_t c = 0; c < v.channels; ++c) {
      const double s = invstd[c], w = value_or(weight, c, 1.0f);
      a[c] = static_cast<float>(w * s);
      b[c] = static_cast<float>(-w * s * s * s * dy_x[c] / count);
      d[c] = static_cast<float>(-w * s * dy_sum[c] / count);
      grad_weight.data_ptr<float>()[c] = static_cast<float>(dy_x[c] * s);
      grad_bias.data_ptr<float>()[c] = static_cast<float>(dy_sum[c]);
    }
    auto dx = at::empty(x.sizes(), x.options().memory_format(format));
    write_all<kInputGradient>(v, x.data_ptr(), dy.data_ptr(), dx.data_ptr(), {mean.data(), a.data(), b.data(), d.data()});
    return {dx, weight.defined() ? grad_weight : at::Tensor(), weight.defined() ? grad_bias : at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

bool is_float_vector(const at::Tensor& t, int64_t channels) {
  return !t.defined() || (t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 &&
                          t.numel() == channels && t.is_contiguous());
}

at::Tensor defined_or_none(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// aten::batch_norm's kernel at the AutogradCPU key: training where batch_norm_training applies, else
// the composite LibTorch runs for every key (it records its own gradients).
at::Tensor dispatched_batch_norm(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
                                 const c10::optional<at::Tensor>& running_var, bool training, double momentum,
                                 double eps, bool cudnn_enabled) {
  const at::Tensor w = defined_or_none(weight), b = defined_or_none(bias), rm = defined_or_none(running_mean),
                   rv = defined_or_none(running_var);
  if (training && batch_norm_training_applies(x, w, b, rm, rv))
    return batch_norm_training(x, w, b, rm, rv, momentum, eps);
  return at::native::batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled);
}

}  // namespace

bool batch_norm_training_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& running_mean, const at::Tensor& running_var) {
  if (ops::selected_path() != ops::KernelPath::Avx512) return false;
  if (!x.defined() || x.dim() != 4 || !x.device().is_cpu()) return false;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) return false;
  if (!x.is_contiguous() && !x.is_contiguous(at::MemoryFormat::ChannelsLast)) return false;
  const int64_t channels = x.size(1);
  if (channels == 0 || x.numel() / channels <= 1) return false;  // LibTorch's error message then
  if (weight.defined() != bias.defined()) return false;  // not a BatchNorm layer's: affine gives both
  return is_float_vector(weight, channels) && is_float_vector(bias, channels) &&
         is_float_vector(running_mean, channels) && is_float_vector(running_var, channels);
}

at::Tensor batch_norm_training(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var, double momentum,
                               double eps) {
  std::optional<Statistics> s;
  {
    const torch::NoGradGuard no_grad;
    s = batch_statistics(x, eps);
    if (s) update_running(*s, x.numel() / x.size(1), momentum, running_mean, running_var);
  }
  if (!s) return at::native::batch_norm(x, weight, bias, running_mean, running_var, true, momentum, eps, false);
  return BatchNormFunction::apply(x, weight, bias, s->mean, s->invstd);
}

void use_batch_norm_kernels() {
  // Kept for the process's life: a static Library would unregister during exit, after LibTorch's
  // dispatcher may be gone.
  [[maybe_unused]] static const auto* registration = [] {
    auto* library = new torch::Library(torch::Library::IMPL, "aten", c10::DispatchKey::AutogradCPU, __FILE__, __LINE__);
    library->impl("batch_norm", TORCH_FN(dispatched_batch_norm));
    return library;
  }();
}

}  // namespace ttq
