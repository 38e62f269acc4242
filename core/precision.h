// --precision: bf16 runs convolutions, linear layers and matrix products in bfloat16 through
// LibTorch's CPU autocast (as torch.autocast("cpu", torch.bfloat16) in Python); latent weights,
// Wp/Wn, their gradients, the optimizer state, normalization statistics, the loss and the
// ternarization stay float32. A scripted model follows eager autocast's rules op by op, not
// TorchScript's autocast pass (precision.cpp).
#pragma once
#include <torch/script.h>

#include <string>

#include "core/choices.h"

namespace ttq {

enum class Precision { Auto, Fp32, Bf16 };
inline constexpr Choice<Precision> kPrecisions[] = {
    {"auto", Precision::Auto, "bf16 where the CPU computes it natively (AVX-512 BF16 or AMX), else fp32"},
    {"fp32", Precision::Fp32, "float32 throughout"},
    {"bf16", Precision::Bf16, "CPU autocast in bfloat16 as torch.autocast on an eager model: convolutions and matrix products in bfloat16 (slow without native bf16)"}};
constexpr const auto& choices(Precision) { return kPrecisions; }

// --memory-format: channels-last (NHWC) images and convolution weights, in which oneDNN's
// convolutions run faster (training steps 1.1-2x, precision.cpp).
enum class MemoryFormat { Auto, Contiguous, ChannelsLast };
inline constexpr Choice<MemoryFormat> kMemoryFormats[] = {
    {"auto", MemoryFormat::Auto, "channels-last for a model with 2-D convolutions, else contiguous"},
    {"contiguous", MemoryFormat::Contiguous, "PyTorch's default (NCHW) order"},
    {"channels-last", MemoryFormat::ChannelsLast, "NHWC images and convolution weights"}};
constexpr const auto& choices(MemoryFormat) { return kMemoryFormats; }

// Auto decided: channels-last for a model with a 4-D parameter (a 2-D convolution's weight), in
// either precision, where it was measured faster on every model (precision.cpp).
bool uses_channels_last(MemoryFormat asked, const torch::jit::Module& module);
// `t` (4-D) in channels-last order with strides that say so. x.contiguous(ChannelsLast) keeps a
// tensor whose strides already qualify, and one with a single channel (a grayscale image batch, a
// first convolution's weight) qualifies in both orders while its strides still say contiguous:
// LibTorch's convolutions choose their layout from the strides, so a grayscale network's first
// layer ran contiguous and the next ops met two layouts (LibTorch then takes scalar loops).
at::Tensor in_channels_last(const at::Tensor& t);
// The module's 4-D parameters in channels-last order (set_data: optimizers and slots keep them),
// or back in contiguous order.
void set_memory_format(torch::jit::Module& module, bool channels_last);

// Routes aten::threshold_backward (ReLU's gradient: reordered first to its activation's memory
// format) and aten::slice_backward (allocated in the gradient's format) in this process, so that no
// op of a channels-last step meets two formats (precision.cpp says why); same values. Registered
// once, at the AutogradCPU key; PyTorch itself and libttq_ops.so never see it.
void use_one_format_gradients();

// AVX-512 BF16 or AMX-BF16; false where TTQ_KERNEL asks for avx2 or portable (an older CPU
// simulated, as the packed kernels take it).
bool cpu_has_native_bf16();

struct ResolvedPrecision {
  Precision precision;  // Fp32 or Bf16
  std::string reason;   // for auto: why
};
ResolvedPrecision resolve_precision(Precision asked);

// Autocast on for its lifetime where `precision` is Bf16 (nothing otherwise); its end clears
// autocast's cache of cast weights, which the next step's update makes stale.
class AutocastScope {
 public:
  explicit AutocastScope(Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool on_ = false, was_enabled_ = false;
  int was_dtype_ = 0;
};

}  // namespace ttq
