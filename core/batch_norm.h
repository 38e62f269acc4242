#pragma once
#include <torch/script.h>

namespace ttq {

// BatchNorm in training (batch statistics) for ttq's bf16 steps. LibTorch's CPU kernels for a
// bfloat16 input take 5-8x the time of a copy of it (ResNet-20 at batch 128: 19 BatchNorms, a
// fifth of the step); these read a channel's values as floats in vector-wide loops, two passes
// for the statistics and one for the output, and one for the gradients' sums and one for the
// input's gradient. Statistics and gradients of the weight and bias are summed per block of rows
// (or per image) in float and over blocks in double, in a fixed order: the same for any thread count.

// Whether batch_norm_training takes `x`: on a CPU with AVX-512 (the packed kernels' path, which
// TTQ_KERNEL may turn down), a 4-D float32 or bfloat16 CPU tensor, contiguous or channels-last,
// more than one value per channel; float32 weight, bias and running statistics where defined.
bool batch_norm_training_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& running_mean, const at::Tensor& running_var);

// aten::batch_norm with training=true: the output in x's dtype and memory format, differentiable
// in x, weight and bias; running statistics (float32, where defined) updated with `momentum` and
// the unbiased variance, as PyTorch does. Only where batch_norm_training_applies.
at::Tensor batch_norm_training(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var, double momentum,
                               double eps);

// Routes aten::batch_norm under CPU autocast (ttq's bf16 forward passes) through
// batch_norm_training where it applies and training is asked; everything else goes on to
// LibTorch's own kernel. Registered once per process (at the AutocastCPU key, where LibTorch
// registers nothing for batch_norm); PyTorch itself and libttq_ops.so never see it.
void use_batch_norm_kernels();

}  // namespace ttq
