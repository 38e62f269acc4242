#pragma once
#include <torch/script.h>

namespace ttq {

// BatchNorm in training (batch statistics) for ttq's training steps. LibTorch's CPU kernels take
// 5-20x the time of a copy of their input (bfloat16 channels-last, float32 contiguous; a ResNet-20
// at batch 128 has 19 BatchNorms); these read a channel's values as floats 16 at a time, two passes
// for the statistics and one for the output, one for the gradients' sums and one for the input's
// gradient. Sums are taken per block of rows (or per image) in float and over blocks in double, in
// a fixed order: the same bits for any thread count.

// Whether batch_norm_training takes `x`: on a CPU with AVX-512 (the packed kernels' path, which
// TTQ_KERNEL may turn down), a 4-D float32 or bfloat16 CPU tensor, contiguous or channels-last,
// more than one value per channel; float32 weight, bias and running statistics where defined.
bool batch_norm_training_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& running_mean, const at::Tensor& running_var);

// aten::batch_norm with training=true: the output in x's dtype and memory format, differentiable
// in x, weight and bias; running statistics (float32, where defined) updated with `momentum` and
// the unbiased variance, as PyTorch does. Only where batch_norm_training_applies; a batch whose
// float sums overflow (values past ~1e19) goes to LibTorch's kernel, which sums float32 in double.
at::Tensor batch_norm_training(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var, double momentum,
                               double eps);

// Routes aten::batch_norm in this process through batch_norm_training where it applies and
// training is asked (in float32 and under autocast alike); everything else goes on to LibTorch's own
// composite. Registered once (at the AutogradCPU key, where LibTorch registers nothing for
// batch_norm: its composite serves every key); PyTorch itself and libttq_ops.so never see it.
void use_batch_norm_kernels();

}  // namespace ttq
