#include "core/precision.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/jit/passes/autocast.h>
#include <torch/library.h>
#include <torch/version.h>

#include <cstdlib>
#include <string_view>
#include <vector>

namespace ttq {
namespace {

// LibTorch 2.4 took the device as an argument and deprecated the CPU-only names.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool cpu_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCPU); }
at::ScalarType cpu_autocast_dtype() { return at::autocast::get_autocast_dtype(at::kCPU); }
void set_cpu_autocast(bool enabled, at::ScalarType dtype) {
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
  at::autocast::set_autocast_dtype(at::kCPU, dtype);
}
#else
bool cpu_autocast_enabled() { return at::autocast::is_cpu_enabled(); }
at::ScalarType cpu_autocast_dtype() { return at::autocast::get_autocast_cpu_dtype(); }
void set_cpu_autocast(bool enabled, at::ScalarType dtype) {
  at::autocast::set_cpu_enabled(enabled);
  at::autocast::set_autocast_cpu_dtype(dtype);
}
#endif

// TorchScript rewrites a scripted graph for autocast with a pass and op lists of its own, on by
// default: it casts both bf16 inputs of elementwise ops such as a residual's aten::add to float32,
// so the rest of the block ran in float32 and every next convolution cast its input back (with their
// gradients, 7-10% of a ResNet-20 bf16 training step; Python's eager autocast leaves such adds in
// bf16, and a test holds ttq to its results). Off, every op of a scripted model goes
// through LibTorch's CPU autocast as it dispatches, the same rules as torch.autocast in Python.
[[maybe_unused]] const bool kEagerAutocastRules = [] {
  torch::jit::setAutocastMode(false);
  return true;
}();

// Gradients in one memory format. In a channels-last network LibTorch makes a few gradients
// contiguous (an average pool's; a strided slice's, as a CIFAR ResNet's option-A shortcut takes
// x[:, :, ::2, ::2]), and an op that meets two formats falls to a scalar loop over mixed strides:
// ReLU's gradient 4-5 ms for a 128x16x28x28 bf16 tensor against 0.2 ms to reorder it first, a sum
// of gradients 1 ms against 0.15. Together about a tenth of a ResNet-20 bf16 training step. These
// two kernels, at LibTorch's AutogradCPU key, keep the activation's format; no value changes. A
// gradient being differentiated (double backward, which ttq never takes) goes through a
// differentiable composite instead.
bool differentiating(const at::Tensor& a, const at::Tensor& b = {}) {
  return at::GradMode::is_enabled() && (a.requires_grad() || (b.defined() && b.requires_grad()));
}

// ReLU's (and threshold's) gradient: `grad` reordered to the activation's format where they differ.
at::Tensor threshold_backward_in_one_format(const at::Tensor& grad, const at::Tensor& self,
                                            const at::Scalar& threshold) {
  if (differentiating(grad, self)) return at::where(self <= threshold, at::zeros({}, grad.options()), grad);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto format = self.suggest_memory_format();
  if (self.dim() != 4 || grad.sizes() != self.sizes() || grad.is_contiguous(format) || !self.is_contiguous(format))
    return at::threshold_backward(grad, self, threshold);
  return at::threshold_backward(grad.contiguous(format), self, threshold);
}

// A slice's gradient: zeros of the input's shape with `grad` in the slice, as LibTorch's, but in
// grad's memory format where LibTorch's is always contiguous, and `grad` itself for a slice that
// takes all (TorchScript's x[:, :, ::2, ::2] slices the first two dimensions whole).
at::Tensor slice_backward_in_grad_format(const at::Tensor& grad, c10::SymIntArrayRef input_sizes, int64_t dim,
                                         c10::SymInt start, c10::SymInt end, c10::SymInt step) {
  std::vector<int64_t> sizes;  // (asIntArrayRefSlow's arguments differ between LibTorch 1.13 and 2.x)
  for (const auto& size : input_sizes) sizes.push_back(size.expect_int());
  const int64_t first = start.expect_int(), last = end.expect_int(), stride = step.expect_int();
  if (grad.sizes() == at::IntArrayRef(sizes)) return grad;  // the whole dimension, in order: grad is the input's gradient
  const auto format = grad.dim() == 4 ? grad.suggest_memory_format() : at::MemoryFormat::Contiguous;
  auto input_grad = at::empty(sizes, grad.options().memory_format(format)).zero_();
  if (differentiating(grad)) return at::slice_scatter(input_grad, grad, dim, first, last, stride);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  input_grad.slice(dim, first, last, stride).copy_(grad);
  return input_grad;
}

}  // namespace

void use_one_format_gradients() {
  // Kept for the process's life, as batch_norm.cpp's registration is.
  [[maybe_unused]] static const auto* registration = [] {
    auto* library = new torch::Library(torch::Library::IMPL, "aten", c10::DispatchKey::AutogradCPU, __FILE__, __LINE__);
    library->impl("threshold_backward", TORCH_FN(threshold_backward_in_one_format));
    library->impl("slice_backward", TORCH_FN(slice_backward_in_grad_format));
    return library;
  }();
}

bool cpu_has_native_bf16() {
  if (const char* kernel = std::getenv("TTQ_KERNEL"))
    if (std::string_view(kernel) == "avx2" || std::string_view(kernel) == "portable") return false;
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

ResolvedPrecision resolve_precision(Precision asked) {
  if (asked != Precision::Auto) return {asked, ""};
  if (cpu_has_native_bf16()) return {Precision::Bf16, "this CPU computes bf16 natively"};
  return {Precision::Fp32, "this CPU has no native bf16 (AVX-512 BF16 or AMX): emulated, bf16 would be slower"};
}

// Measured (scripts/bench_train.sh's ttq_bench_train, a TTQ training step at batch 128 on two
// cores, once ReLU's and slices' gradients kept one layout and one-channel inputs said
// channels-last): channels-last faster on every convolutional model, in both precisions and on both
// LibTorch lines. LibTorch 1.13: ResNet-20 1.15-1.20x in float32 and 1.17-1.23x in bf16; the zoo's
// CNNs of 2 to 7 convolutions 1.12-1.36x in float32 and 1.30-2.07x in bf16. LibTorch 2.6:
// ResNet-20 1.00-1.09x and 1.17-1.24x, the small CNNs 1.12-1.50x and 1.10-1.81x; `ttq eval` of
// ResNet-20 1.00-1.25x on both. (Before those fixes it was slower on small models and in float32.)
bool uses_channels_last(MemoryFormat asked, const torch::jit::Module& module) {
  if (asked != MemoryFormat::Auto) return asked == MemoryFormat::ChannelsLast;
  for (const auto& p : module.parameters(true))
    if (p.dim() == 4) return true;  // a 2-D convolution's weight
  return false;
}

at::Tensor in_channels_last(const at::Tensor& t) {
  if (t.dim() != 4 || (t.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                       t.suggest_memory_format() == at::MemoryFormat::ChannelsLast))
    return t;
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast)).copy_(t);
}

void set_memory_format(torch::jit::Module& module, bool channels_last) {
  torch::NoGradGuard no_grad;
  for (auto p : module.parameters(true))
    if (p.dim() == 4) p.set_data(channels_last ? in_channels_last(p) : p.contiguous());
}

AutocastScope::AutocastScope(Precision precision) : on_(precision == Precision::Bf16) {
  if (!on_) return;
  was_enabled_ = cpu_autocast_enabled();
  was_dtype_ = static_cast<int>(cpu_autocast_dtype());
  set_cpu_autocast(true, at::kBFloat16);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!on_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_cpu_autocast(was_enabled_, static_cast<at::ScalarType>(was_dtype_));
}

}  // namespace ttq
