// core/batch_norm: ttq's BatchNorm in training against LibTorch's in double on many shapes (output,
// running statistics, the three gradients), against finite differences, bfloat16 within one
// rounding of LibTorch's, the same bits for any thread count, overflow, and the dispatch.
#include "catch.h"

#include <ATen/Parallel.h>
#include <ATen/ops/batch_norm_native.h>


#include "core/batch_norm.h"
#include "core/ops/kernels.h"
#include "core/precision.h"
#include "helpers.h"

using namespace ttq;

namespace {

struct Shape {
  int64_t n, c, h, w;
};
// Channel counts below, at and past one vector of 16 (with a remainder), planes below and past 16.
const Shape kShapes[] = {{2, 3, 5, 7}, {4, 16, 8, 8}, {3, 17, 4, 5}, {8, 64, 7, 7}, {5, 40, 1, 1}, {1, 5, 3, 3},
                         {2, 33, 6, 6}};

at::Tensor in_format(const at::Tensor& t, bool channels_last) {
  return t.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

struct Run {
  at::Tensor y, dx, dweight, dbias, running_mean, running_var;
};

// One forward and backward (of sum(y · r)) through `batch_norm`, with its own running statistics.
template <typename F>
Run run(F batch_norm, const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& b0, const at::Tensor& r) {
  auto x = x0.detach().clone().requires_grad_(true);
  auto w = w0.detach().clone().requires_grad_(true), b = b0.detach().clone().requires_grad_(true);
  auto rm = at::linspace(-1, 1, x0.size(1), w0.options()), rv = at::linspace(0.5, 2, x0.size(1), w0.options());
  auto y = batch_norm(x, w, b, rm, rv);
  (y.to(r.scalar_type()) * r).sum().backward();
  return {y.detach(), x.grad(), w.grad(), b.grad(), rm, rv};
}

Run ours(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r) {
  return run([](auto&&... a) { return batch_norm_training(a..., 0.1, 1e-5); }, x, w, b, r);
}

// LibTorch's own kernel in double: the reference.
Run reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& r) {
  return run([](const at::Tensor& xx, const at::Tensor& ww, const at::Tensor& bb, const at::Tensor& rm,
                const at::Tensor& rv) { return at::batch_norm(xx, ww, bb, rm, rv, true, 0.1, 1e-5, false); },
             x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble), r.to(at::kDouble));
}

void require_close(const at::Tensor& got, const at::Tensor& want, double tolerance, const char* what) {
  INFO(what);
  REQUIRE(got.sizes() == want.sizes());
  const double scale = std::max(1.0, want.abs().max().item<double>());
  REQUIRE((got.to(at::kDouble) - want).abs().max().item<double>() <= tolerance * scale);
}

bool avx512() { return ops::selected_path() == ops::KernelPath::Avx512; }
void warn_not_run() { WARN("this CPU has no AVX-512, where ttq's BatchNorm kernel runs: not run"); }


}  // namespace

TEST_CASE("batch_norm_training equals LibTorch's BatchNorm in double on every shape and both layouts") {
  if (!avx512()) return warn_not_run();
  at::manual_seed(3);
  for (const Shape& s : kShapes)
    for (const bool channels_last : {false, true}) {
      INFO(s.n << "x" << s.c << "x" << s.h << "x" << s.w << (channels_last ? " channels-last" : " contiguous"));
      // An offset mean, as a convolution's outputs have: the two-pass variance must not lose it.
      const auto x = in_format(at::randn({s.n, s.c, s.h, s.w}) * 3 + 20, channels_last);
      const auto w = at::randn({s.c}), b = at::randn({s.c}), r = in_format(at::randn(x.sizes()), channels_last);
      REQUIRE(batch_norm_training_applies(x, w, b, at::zeros({s.c}), at::ones({s.c})));
      const Run got = ours(x, w, b, r), want = reference(x, w, b, r);
      REQUIRE(got.y.is_contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
      require_close(got.y, want.y, 2e-5, "output");
      require_close(got.dx, want.dx, 2e-4, "input gradient");
      require_close(got.dweight, want.dweight, 2e-5, "weight gradient");
      require_close(got.dbias, want.dbias, 2e-5, "bias gradient");
      require_close(got.running_mean, want.running_mean, 1e-6, "running mean");
      require_close(got.running_var, want.running_var, 1e-5, "running variance");
    }
}

TEST_CASE("batch_norm_training's input gradient agrees with finite differences") {
  if (!avx512()) return warn_not_run();
  at::manual_seed(5);
  const auto x = at::randn({3, 4, 3, 2}, at::kFloat), w = at::randn({4}), b = at::randn({4});
  const auto r = at::randn(x.sizes());
  const auto loss = [&](const at::Tensor& xx) {
    auto rm = at::zeros({4}), rv = at::ones({4});
    return (batch_norm_training(xx, w, b, rm, rv, 0.1, 1e-5).to(at::kDouble) * r.to(at::kDouble)).sum().item<double>();
  };
  const at::Tensor dx = ours(x, w, b, r).dx;
  const float h = 1e-2f;
  for (int64_t i = 0; i < x.numel(); i += 5) {
    auto up = x.clone(), down = x.clone();
    up.view(-1)[i] += h;
    down.view(-1)[i] -= h;
    const double numeric = (loss(up) - loss(down)) / (2.0 * h);
    INFO("element " << i);
    REQUIRE(std::abs(numeric - dx.view(-1)[i].item<double>()) <= 2e-3 * std::max(1.0, std::abs(numeric)));
  }
}

TEST_CASE("batch_norm_training in bfloat16 is LibTorch's float result rounded, within one bfloat16 step") {
  if (!avx512()) return warn_not_run();
  at::manual_seed(7);
  for (const bool channels_last : {false, true}) {
    const auto x = in_format(at::randn({16, 32, 9, 9}), channels_last).to(at::kBFloat16);
    // The gradient reaching a bfloat16 output is bfloat16 (the cast's backward rounds it): so in both.
    const auto w = at::rand({32}) + 0.5, b = at::randn({32}), r = at::randn(x.sizes()).to(at::kBFloat16).to(at::kFloat);
    const Run got = ours(x, w, b, r), want = reference(x.to(at::kFloat), w, b, r);
    REQUIRE(got.y.scalar_type() == at::kBFloat16);
    REQUIRE(got.dx.scalar_type() == at::kBFloat16);
    // One step of bfloat16 is 2^-8 of a value's magnitude (its 8 significant bits).
    const auto step = want.y.abs().clamp_min(1e-3) * std::pow(2.0, -8);
    REQUIRE(((got.y.to(at::kDouble) - want.y).abs() <= step).all().item<bool>());
    require_close(got.dweight, want.dweight, 1e-3, "weight gradient");
    require_close(got.running_var, want.running_var, 1e-5, "running variance");
  }
}

TEST_CASE("batch_norm_training gives the same bits for one thread and two") {
  if (!avx512()) return warn_not_run();
  at::manual_seed(9);
  const int threads = at::get_num_threads();
  for (const bool channels_last : {false, true}) {
    const auto x = in_format(at::randn({32, 16, 14, 14}), channels_last).to(at::kBFloat16);
    const auto w = at::randn({16}), b = at::randn({16}), r = at::randn(x.sizes());
    at::set_num_threads(1);
    const Run one = ours(x, w, b, r);
    at::set_num_threads(2);
    const Run two = ours(x, w, b, r);
    REQUIRE(at::equal(one.y, two.y));
    REQUIRE(at::equal(one.dx, two.dx));
    REQUIRE(at::equal(one.dweight, two.dweight));
    REQUIRE(at::equal(one.running_var, two.running_var));
  }
  at::set_num_threads(threads);
}

TEST_CASE("Once registered, aten::batch_norm in training runs ttq's kernel, in bf16 and float32, and LibTorch's elsewhere") {
  use_batch_norm_kernels();
  use_batch_norm_kernels();  // once per process: a second call registers nothing
  at::manual_seed(11);
  for (const bool bf16 : {true, false}) {
    INFO((bf16 ? "bf16 under autocast" : "float32"));
    // Large enough that the two kernels' float sums round some output differently.
    auto x = at::randn({32, 16, 14, 14}).contiguous(at::MemoryFormat::ChannelsLast);
    if (bf16) x = x.to(at::kBFloat16);
    const auto w = at::randn({16}), b = at::randn({16});
    const auto call = [&](bool training) {
      auto rm = at::zeros({16}), rv = at::ones({16});
      const AutocastScope scope(bf16 ? Precision::Bf16 : Precision::Fp32);
      return at::batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5, false);
    };
    const auto libtorch = [&](bool training) {  // LibTorch's composite, as every key ran it before
      auto rm = at::zeros({16}), rv = at::ones({16});
      return at::native::batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5, false);
    };
    auto rm = at::zeros({16}), rv = at::ones({16});
    const auto kernel = batch_norm_training(x, w, b, rm, rv, 0.1, 1e-5);
    if (avx512()) {
      REQUIRE(at::equal(call(true), kernel));
      REQUIRE_FALSE(at::equal(libtorch(true), kernel));  // so that the equality above is the kernel's
    }
    REQUIRE(at::equal(call(false), libtorch(false)));  // evaluation
    const test::KernelVariable avx2("avx2");            // an AVX2 machine simulated
    REQUIRE_FALSE(batch_norm_training_applies(x, w, b, at::zeros({16}), at::ones({16})));
    REQUIRE(at::equal(call(true), libtorch(true)));
  }
}

TEST_CASE("A batch whose float sums overflow goes to LibTorch's kernel, which sums in double") {
  if (!avx512()) return warn_not_run();
  const auto x = at::randn({4, 3, 5, 5}) * 3e19;  // squares past float's range, not double's
  const auto w = at::ones({3}), b = at::zeros({3});
  auto rm = at::zeros({3}), rv = at::ones({3}), rm2 = at::zeros({3}), rv2 = at::ones({3});
  const auto y = batch_norm_training(x, w, b, rm, rv, 0.1, 1e-5);
  REQUIRE(at::isfinite(y).all().item<bool>());
  REQUIRE(at::equal(y, at::native::batch_norm(x, w, b, rm2, rv2, true, 0.1, 1e-5, false)));
  REQUIRE(at::equal(rv, rv2));
}

TEST_CASE("batch_norm_training_applies to 4-D float32 and bfloat16 tensors with float32 parameters only") {
  if (!avx512()) return warn_not_run();
  const auto w = at::ones({4}), b = at::zeros({4}), rm = at::zeros({4}), rv = at::ones({4});
  const at::Tensor none;
  CHECK(batch_norm_training_applies(at::randn({2, 4, 3, 3}), w, b, rm, rv));
  CHECK(batch_norm_training_applies(at::randn({2, 4, 3, 3}), none, none, none, none));
  CHECK_FALSE(batch_norm_training_applies(at::randn({2, 4, 3}), w, b, rm, rv));
  CHECK_FALSE(batch_norm_training_applies(at::randn({2, 4, 3, 3}, at::kDouble), w, b, rm, rv));
  CHECK_FALSE(batch_norm_training_applies(at::randn({2, 4, 3, 3}), w.to(at::kBFloat16), b, rm, rv));
  CHECK_FALSE(batch_norm_training_applies(at::randn({2, 4, 3, 6}).slice(3, 0, 6, 2), w, b, rm, rv));
  CHECK_FALSE(batch_norm_training_applies(at::randn({1, 4, 1, 1}), w, b, rm, rv));  // one value a channel
}
