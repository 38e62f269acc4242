// core/ternary: thresholds, scale init, the ternarize forward/backward and code statistics.
#include "catch.h"

#include <cmath>

#include "core/error.h"
#include "core/ternary.h"

using namespace ttq;

namespace {

torch::Tensor random_weights(std::vector<int64_t> shape, uint64_t seed, torch::Dtype dtype = torch::kFloat) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::TensorOptions().dtype(dtype));
}

torch::Tensor scalar(double v, torch::Dtype dtype = torch::kFloat) {
  return torch::full({}, v, torch::TensorOptions().dtype(dtype)).requires_grad_(true);
}

// A loss with a non-constant gradient, so that g = dL/dw differs per weight.
torch::Tensor loss_of(const torch::Tensor& w, const torch::Tensor& c) {
  return (c * w).sum() + 0.5 * (w * w).sum();
}

}  // namespace

TEST_CASE("max-scaled threshold is t times max|x| and decides the codes") {
  const auto x = random_weights({64, 3, 3, 3}, 1);
  const ThresholdSpec spec{ThresholdMode::MaxScaled, 0.05};
  const float delta = compute_threshold(x, spec);
  CHECK(delta == static_cast<float>(0.05 * x.abs().max().item<double>()));
  const auto w = ternarize(x, scalar(0.5), scalar(0.25), delta);
  CHECK(torch::equal(w == 0.5f, x > delta));
  CHECK(torch::equal(w == -0.25f, x < -delta));
  CHECK(torch::equal(w == 0.0f, x.abs() <= delta));
}

TEST_CASE("fixed sparsity zeroes exactly floor(s n) weights when there are no ties") {
  const auto x = random_weights({37, 11}, 2);  // n = 407
  for (double s : {0.0, 0.1, 0.3, 0.5, 0.7, 0.999}) {
    const float delta = compute_threshold(x, {ThresholdMode::Sparsity, s});
    const auto counts = count_codes(x, delta);
    CAPTURE(s);
    CHECK(counts.zero == static_cast<int64_t>(std::floor(s * 407)));
    CHECK(counts.total() == 407);
  }
}

TEST_CASE("fixed sparsity with ties zeroes every tied weight and at least floor(s n)") {
  // |x| takes the values 1, 2, 3, 4 with 25 weights each; s = 0.3 lands inside the 2s.
  const auto x = torch::arange(100).remainder(4).add(1).to(torch::kFloat) *
                 (torch::arange(100).remainder(2) * 2 - 1).to(torch::kFloat);
  const float delta = compute_threshold(x, {ThresholdMode::Sparsity, 0.3});
  CHECK(delta == 2.0f);
  CHECK(count_codes(x, delta).zero == 50);
}

TEST_CASE("threshold values outside their range are usage errors") {
  for (double t : {0.0, 1.0, -0.1, 1.5, std::nan("")}) {
    CAPTURE(t);
    CHECK_THROWS_AS(validate({ThresholdMode::MaxScaled, t}), Error);
  }
  for (double s : {1.0, -0.01, 2.0}) {
    CAPTURE(s);
    CHECK_THROWS_AS(validate({ThresholdMode::Sparsity, s}), Error);
  }
  CHECK_NOTHROW(validate({ThresholdMode::Sparsity, 0.0}));
  CHECK_NOTHROW(validate({ThresholdMode::MaxScaled, 0.05}));
  try {
    validate({ThresholdMode::MaxScaled, 1.0});
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Usage);
  }
}

TEST_CASE("mean init is the L2-optimal scale of each side - ones is 1") {
  const auto x = random_weights({200}, 3);
  const float delta = 0.3f;
  const Scales s = init_scales(x, delta, ScaleInit::Mean);
  CHECK(s.wp == Approx(x.masked_select(x > delta).mean().item<double>()).epsilon(1e-6));
  CHECK(s.wn == Approx((-x.masked_select(x < -delta)).mean().item<double>()).epsilon(1e-6));
  // Optimality: the scale minimising ||x - Wp||^2 over the positive set is its mean.
  const auto pos = x.masked_select(x > delta);
  const auto err = [&](double wp) { return (pos - wp).pow(2).sum().item<double>(); };
  CHECK(err(s.wp) < err(s.wp * 1.01));
  CHECK(err(s.wp) < err(s.wp * 0.99));

  const Scales ones = init_scales(x, delta, ScaleInit::Ones);
  CHECK(ones.wp == 1.0f);
  CHECK(ones.wn == 1.0f);
}

TEST_CASE("mean init with an empty side takes the other side's scale") {
  const auto x = torch::tensor({0.5f, 1.5f, 0.01f});
  const Scales s = init_scales(x, 0.1f, ScaleInit::Mean);
  CHECK(s.wp == Approx(1.0));
  CHECK(s.wn == Approx(1.0));
  const Scales z = init_scales(torch::zeros({4}), 0.0f, ScaleInit::Mean);
  CHECK(z.wp == 0.0f);
  CHECK(z.wn == 0.0f);
}

TEST_CASE("gradients of Wp and Wn match central finite differences including the sign of dWn") {
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto x = random_weights({8, 4, 3, 3}, 4, torch::kDouble);
  const auto c = random_weights({8, 4, 3, 3}, 5, torch::kDouble);
  const float delta = compute_threshold(x, {ThresholdMode::Sparsity, 0.4});
  auto wp = scalar(0.7, torch::kDouble);
  auto wn = scalar(1.3, torch::kDouble);
  loss_of(ternarize(x, wp, wn, delta), c).backward();

  const auto loss_at = [&](double p, double n) {
    torch::NoGradGuard no_grad;
    return loss_of(ternarize(x, torch::full({}, p, opts), torch::full({}, n, opts), delta), c).item<double>();
  };
  const double h = 1e-4;
  const double fd_wp = (loss_at(0.7 + h, 1.3) - loss_at(0.7 - h, 1.3)) / (2 * h);
  const double fd_wn = (loss_at(0.7, 1.3 + h) - loss_at(0.7, 1.3 - h)) / (2 * h);
  CHECK(wp.grad().item<double>() == Approx(fd_wp).epsilon(1e-6));
  CHECK(wn.grad().item<double>() == Approx(fd_wn).epsilon(1e-6));

  // With L = sum(w), dL/dWn = -(number of negative codes): growing Wn lowers the loss.
  auto wn2 = scalar(1.3, torch::kDouble);
  ternarize(x, scalar(0.7, torch::kDouble), wn2, delta).sum().backward();
  CHECK(wn2.grad().item<double>() == -static_cast<double>(count_codes(x, delta).neg));
}

TEST_CASE("ternarize's backward equals autograd of the equivalent expression") {
  const auto x0 = random_weights({16, 8, 3, 3}, 6, torch::kDouble);
  const auto c = random_weights({16, 8, 3, 3}, 7, torch::kDouble);
  const float delta = compute_threshold(x0, {ThresholdMode::MaxScaled, 0.05});

  auto x = x0.clone().requires_grad_(true);
  auto wp = scalar(0.6, torch::kDouble);
  auto wn = scalar(0.9, torch::kDouble);
  const auto w = ternarize(x, wp, wn, delta);
  loss_of(w, c).backward();

  // The same forward written with plain ops; the straight-through term adds Wp·x, x or Wn·x
  // with zero value and the authors' gradient for x.
  auto xr = x0.clone().requires_grad_(true);
  auto wpr = scalar(0.6, torch::kDouble);
  auto wnr = scalar(0.9, torch::kDouble);
  const auto pos = (x0 > delta).to(torch::kDouble);
  const auto neg = (x0 < -delta).to(torch::kDouble);
  const auto ste_scale = pos * wpr.detach() + neg * wnr.detach() + (1 - pos - neg);
  const auto wr = pos * wpr - neg * wnr + (ste_scale * xr - (ste_scale * xr).detach());
  CHECK(torch::equal(w.detach(), wr.detach()));
  loss_of(wr, c).backward();

  CHECK(torch::allclose(x.grad(), xr.grad(), 1e-12, 1e-12));
  CHECK(wp.grad().item<double>() == Approx(wpr.grad().item<double>()).epsilon(1e-12));
  CHECK(wn.grad().item<double>() == Approx(wnr.grad().item<double>()).epsilon(1e-12));

  // And the rule itself, written out: dx = Wp·g | g | Wn·g with g = c + w.
  const auto g = c + w.detach();
  const auto expected = g * (pos * 0.6 + neg * 0.9 + (1 - pos - neg));
  CHECK(torch::allclose(x.grad(), expected, 1e-12, 1e-12));
}

TEST_CASE("scale gradients keep the scales' shape") {
  const auto x = random_weights({10, 10}, 8);
  auto wp = torch::ones({1}).requires_grad_(true);
  auto wn = torch::ones({1}).requires_grad_(true);
  ternarize(x, wp, wn, 0.1f).sum().backward();
  CHECK(wp.grad().sizes() == wp.sizes());
  CHECK(wn.grad().sizes() == wn.sizes());
}

TEST_CASE("code counts and their entropy") {
  CodeCounts even{100, 100, 100};
  CHECK(even.entropy_bits() == Approx(std::log2(3.0)));
  CodeCounts half{25, 50, 25};  // s = 0.5: H = 1.5 bits (shared/docs/algorithm.md)
  CHECK(half.entropy_bits() == Approx(1.5));
  CHECK(half.sparsity() == Approx(0.5));
  CodeCounts s3{35, 30, 35};  // s = 0.3: 1.58 bits
  CHECK(s3.entropy_bits() == Approx(1.58).margin(0.005));
  CodeCounts all_zero{0, 10, 0};
  CHECK(all_zero.entropy_bits() == 0.0);

  const auto x = torch::tensor({-3.0f, -0.5f, 0.0f, 0.2f, 0.5f, 2.0f});
  const CodeCounts c = count_codes(x, 0.5f);
  CHECK(c.neg == 1);
  CHECK(c.zero == 4);
  CHECK(c.pos == 1);
}

TEST_CASE("the fused float32 path and the generic path give the same values and gradients") {
  const auto x64 = random_weights({32, 16, 3, 3}, 10, torch::kDouble);
  const auto c64 = random_weights({32, 16, 3, 3}, 11, torch::kDouble);
  const auto x32 = x64.to(torch::kFloat);
  const float delta = compute_threshold(x32, {ThresholdMode::MaxScaled, 0.05});
  CHECK(delta == static_cast<float>(0.05 * x32.abs().max().item<double>()));

  auto xa = x32.clone().requires_grad_(true);  // fused
  auto wpa = scalar(0.6), wna = scalar(0.9);
  const auto wa = ternarize(xa, wpa, wna, delta);
  loss_of(wa, c64.to(torch::kFloat)).backward();

  auto xb = x32.to(torch::kDouble).requires_grad_(true);  // generic, same values
  auto wpb = scalar(0.6, torch::kDouble), wnb = scalar(0.9, torch::kDouble);
  const auto wb = ternarize(xb, wpb, wnb, delta);
  loss_of(wb, c64).backward();

  CHECK(torch::equal(wa.detach(), wb.detach().to(torch::kFloat)));
  CHECK(torch::allclose(xa.grad().to(torch::kDouble), xb.grad(), 1e-5, 1e-6));
  CHECK(wpa.grad().item<double>() == Approx(wpb.grad().item<double>()).epsilon(1e-5));
  CHECK(wna.grad().item<double>() == Approx(wnb.grad().item<double>()).epsilon(1e-5));
  CHECK(wna.grad().item<double>() * wnb.grad().item<double>() > 0);  // same sign of dWn
}
