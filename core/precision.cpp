#include "core/precision.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/jit/passes/autocast.h>
#include <torch/version.h>

#include <cstdlib>
#include <string_view>

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

}  // namespace

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

// Measured (scripts/bench_train.sh's ttq_bench_train, a training step at batch 128 on two cores):
// on LibTorch 1.13 in bf16, channels-last made ResNet-20 (19 convolutions) 1.3x faster and models
// of 2 to 7 convolutions 5-25% slower (the reorders at the model's ends are not paid back); in
// float32 it was 0-10% slower on all four. On LibTorch 2.6 it did not pay on the bf16 ResNet-20
// step (129 ms against 128-135 ms contiguous, with eager autocast rules): there auto stays contiguous.
constexpr int kChannelsLastMinConvolutions = 16;
constexpr bool kChannelsLastPays = TORCH_VERSION_MAJOR < 2;

bool uses_channels_last(MemoryFormat asked, Precision precision, const torch::jit::Module& module) {
  if (asked != MemoryFormat::Auto) return asked == MemoryFormat::ChannelsLast;
  if (precision != Precision::Bf16 || !kChannelsLastPays) return false;
  int convolutions = 0;
  for (const auto& p : module.parameters(true)) convolutions += p.dim() == 4;
  return convolutions >= kChannelsLastMinConvolutions;
}

void set_memory_format(torch::jit::Module& module, bool channels_last) {
  torch::NoGradGuard no_grad;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (auto p : module.parameters(true))
    if (p.dim() == 4) p.set_data(p.contiguous(format));
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
