// core/precision: --precision's autocast scope, what auto picks on this CPU and on a simulated AVX2
// one, and a bf16 training run against a float32 one.
#include "catch.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include "core/precision.h"
#include "core/train.h"
#include "formats/torchscript.h"
#include "helpers.h"
#include "plugins/dataset.h"

using namespace ttq;

namespace {

torch::jit::Module small_cnn() { return load_torchscript(std::string(TTQ_FIXTURES) + "/small_cnn.pt").module; }

// The kernel's own account of the CPU: a word of /proc/cpuinfo's flags.
bool cpuinfo_flag(const std::string& flag) {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line);
    for (std::string w; words >> w;)
      if (w == flag) return true;
    return false;
  }
  return false;
}

}  // namespace

TEST_CASE("bf16 runs the model's convolutions and linear layers in bfloat16 - fp32 and the scope's end do not") {
  auto model = small_cnn();
  model.eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::rand({4, 1, 28, 28});
  const auto fp = model.forward({x}).toTensor();
  REQUIRE(fp.scalar_type() == torch::kFloat);
  {
    const AutocastScope off(Precision::Fp32);
    CHECK(torch::equal(model.forward({x}).toTensor(), fp));
  }
  torch::Tensor bf;
  {
    const AutocastScope on(Precision::Bf16);
    { const AutocastScope inner(Precision::Bf16); }  // a nested scope's end leaves the outer one on
    bf = model.forward({x}).toTensor();
  }
  CHECK(bf.scalar_type() == torch::kBFloat16);
  CHECK(torch::equal(model.forward({x}).toTensor(), fp));
  // bfloat16 keeps 8 significant bits: close to float32, and not equal to it.
  CHECK(torch::allclose(bf.to(torch::kFloat), fp, 0.05, 0.05));
  CHECK(!torch::equal(bf.to(torch::kFloat), fp));
}

TEST_CASE("precision auto is bf16 where the CPU has AVX-512 BF16 or AMX, fp32 on a simulated AVX2 machine") {
  test::KernelVariable kernel;
  kernel.set(nullptr);
  const bool native = cpuinfo_flag("avx512_bf16") || cpuinfo_flag("amx_bf16");
  CHECK(cpu_has_native_bf16() == native);
  CHECK(resolve_precision(Precision::Auto).precision == (native ? Precision::Bf16 : Precision::Fp32));
  for (const char* older : {"avx2", "portable"}) {
    kernel.set(older);
    const ResolvedPrecision r = resolve_precision(Precision::Auto);
    CHECK(r.precision == Precision::Fp32);
    CHECK_THAT(r.reason, Catch::Contains("no native bf16"));
    CHECK(resolve_precision(Precision::Bf16).precision == Precision::Bf16);  // asked for: taken
  }
}

namespace {

DataSplits random_images() {
  auto gen = at::detail::createCPUGenerator(7);
  DataSplits data;
  data.train = Dataset(torch::rand({64, 1, 28, 28}, gen), torch::randint(0, 10, {64}, gen, torch::kInt64));
  data.test = data.train;
  data.num_classes = 10;
  return data;
}

// Steps of SGD, whose updates follow the gradients linearly, on the small CNN.
TrainOptions sgd_steps(int steps, Precision precision, MemoryFormat format = MemoryFormat::Auto) {
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 16;
  o.optimizer = Optimizer::Sgd;
  o.lr = 0.01;
  o.precision = precision;
  o.memory_format = format;
  o.keep = Keep::Last;  // random labels: the best of noisy scores could be the start in both
  o.on_divergence = OnDivergence::Continue;
  o.max_steps = steps;
  return o;
}

// Every state tensor of a trainer, flattened in logical order, into one.
torch::Tensor flat_state(Trainer& trainer) {
  std::vector<torch::Tensor> parts;
  for (const auto& [name, t] : trainer.state_tensors()) {
    CHECK(t.scalar_type() == torch::kFloat);  // latent weights, Wp/Wn, the FP layers: float32
    parts.push_back(t.detach().reshape(-1).clone());
  }
  return torch::cat(parts);
}

// The state before and after the run.
std::pair<torch::Tensor, torch::Tensor> train(const TrainOptions& o) {
  Trainer trainer(small_cnn(), o, random_images());
  const auto before = flat_state(trainer);
  std::atomic<bool> stop{false};
  trainer.run({}, stop);
  return {before, flat_state(trainer)};
}

}  // namespace

TEST_CASE("a bf16 step trains float32 weights and scales as the float32 step does, and repeats bit for bit") {
  const auto [start, fp] = train(sgd_steps(1, Precision::Fp32));
  const auto bf = train(sgd_steps(1, Precision::Bf16)).second, again = train(sgd_steps(1, Precision::Bf16)).second;
  CHECK(torch::equal(bf, again));
  CHECK(!torch::equal(bf, fp));  // the products did run in bfloat16
  // One step's update is the gradient: the bf16 one is the float32 one within bfloat16's rounding,
  // which is coarse on this untrained model and random batch (measured: 8% of the update; PyTorch's
  // own autocast gets 16-25% per layer on it); a wrong gradient, or a part not trained, would be as
  // far apart as the update itself.
  const double moved = (fp - start).norm().item<double>(), apart = (bf - fp).norm().item<double>();
  CHECK(moved > 0);
  CHECK(apart < 0.3 * moved);
}

TEST_CASE("memory format auto is channels-last for convolutional models - same training, stored contiguous") {
  // torchvision's ResNet-18: 20 convolutions; the small CNN: 2.
  DataSplits rgb;
  rgb.train = Dataset(torch::rand({16, 3, 32, 32}), torch::randint(0, 10, {16}, torch::kInt64));
  rgb.test = rgb.train;
  rgb.num_classes = 10;
  const auto resnet = [&](Precision precision) {
    return Trainer(load_torchscript(std::string(TTQ_FIXTURES) + "/resnet18.pt").module, sgd_steps(8, precision), rgb)
        .options()
        .memory_format;
  };
  CHECK(resnet(Precision::Bf16) == MemoryFormat::ChannelsLast);
  CHECK(resnet(Precision::Fp32) == MemoryFormat::ChannelsLast);
  const DataSplits images = random_images();
  CHECK(Trainer(small_cnn(), sgd_steps(8, Precision::Fp32), images).options().memory_format ==
        MemoryFormat::ChannelsLast);
  CHECK(Trainer(small_cnn(), sgd_steps(8, Precision::Fp32, MemoryFormat::Contiguous), images)
            .options()
            .memory_format == MemoryFormat::Contiguous);
  Trainer bf(small_cnn(), sgd_steps(8, Precision::Bf16, MemoryFormat::ChannelsLast), images);
  // One input channel: strides that say channels-last (in_channels_last), or the layer runs contiguous.
  const auto first = bf.module().attr("conv1").toModule().attr("weight").toTensor();
  CHECK(first.size(1) == 1);
  CHECK(first.suggest_memory_format() == at::MemoryFormat::ChannelsLast);
  TrainOptions linear = sgd_steps(8, Precision::Bf16);
  linear.quant.selection.quantize_first = linear.quant.selection.quantize_last = true;
  const DataSplits vectors = load_dataset(std::string("tensors:") + TTQ_FIXTURES + "/tensors.pt");
  CHECK(Trainer(load_torchscript(std::string(TTQ_FIXTURES) + "/one_layer.pt").module, linear, vectors)
            .options()
            .memory_format == MemoryFormat::Contiguous);  // no convolution
  std::atomic<bool> stop{false};
  bf.run({}, stop);
  bf.finalize();
  for (const auto& p : bf.module().parameters()) CHECK(p.is_contiguous());
  // In float32 the order changes only how the sums run: the same training within rounding.
  const auto [start, contiguous] = train(sgd_steps(8, Precision::Fp32, MemoryFormat::Contiguous));
  const auto nhwc = train(sgd_steps(8, Precision::Fp32, MemoryFormat::ChannelsLast)).second;
  CHECK((nhwc - contiguous).norm().item<double>() < 1e-3 * (contiguous - start).norm().item<double>());
}

namespace {

bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::Tensor channels_last_input(at::ScalarType dtype) {
  return torch::randn({4, 16, 6, 6}).to(dtype).contiguous(at::MemoryFormat::ChannelsLast).requires_grad_(true);
}

}  // namespace

TEST_CASE("one-format gradients: ReLU's and a slice's gradients keep the activation's layout and LibTorch's values") {
  use_one_format_gradients();
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    CAPTURE(dtype);
    // A contiguous gradient (as an average pool's) into a channels-last ReLU.
    auto x = channels_last_input(dtype);
    const auto y = torch::relu(x);
    const auto g = torch::randn(y.sizes()).to(dtype);
    y.backward(g);
    CHECK(torch::equal(x.grad(), torch::where(y > 0, g, torch::zeros_like(g))));
    CHECK(is_channels_last(x.grad()));
    // x[:, :, ::2, 1::2] as TorchScript slices it: every dimension, the first two whole.
    x = channels_last_input(dtype);
    const auto s = x.slice(0, 0, 4).slice(1, 0, 16).slice(2, 0, 6, 2).slice(3, 1, 6, 2);
    const auto gs = torch::randn(s.sizes()).to(dtype).contiguous(at::MemoryFormat::ChannelsLast);
    s.backward(gs);
    auto expected = torch::zeros(x.sizes(), x.options().requires_grad(false));
    expected.slice(2, 0, 6, 2).slice(3, 1, 6, 2).copy_(gs);
    CHECK(torch::equal(x.grad(), expected));
    CHECK(is_channels_last(x.grad()));
  }
}

TEST_CASE("one-format gradients: differentiating ReLU's and a slice's gradients still works (double backward)") {
  use_one_format_gradients();
  const auto x = channels_last_input(at::kFloat);
  const auto v = torch::randn(x.sizes());
  // d/dg of sum(v * relu'(x) g) is v where x > 0; of a slice's gradient, v's slice.
  auto g = torch::randn(x.sizes()).requires_grad_(true);
  const auto y = torch::relu(x);
  auto gx = torch::autograd::grad({y}, {x}, {g}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  (gx * v).sum().backward();
  CHECK(torch::allclose(g.grad(), torch::where(y > 0, v, torch::zeros_like(v))));
  const auto s = x.slice(2, 1, 6, 2);
  g = torch::randn(s.sizes()).requires_grad_(true);
  gx = torch::autograd::grad({s}, {x}, {g}, true, true)[0];
  (gx * v).sum().backward();
  CHECK(torch::equal(g.grad(), v.slice(2, 1, 6, 2)));
}

TEST_CASE("in_channels_last gives one-channel tensors strides that say channels-last, and keeps the values") {
  const auto gray = torch::randn({8, 1, 5, 5});
  CHECK(gray.contiguous(at::MemoryFormat::ChannelsLast).suggest_memory_format() == at::MemoryFormat::Contiguous);
  const auto nhwc = in_channels_last(gray);
  CHECK(is_channels_last(nhwc));
  CHECK(torch::equal(nhwc, gray));
  const auto rgb = torch::randn({8, 3, 5, 5}).contiguous(at::MemoryFormat::ChannelsLast);
  CHECK(in_channels_last(rgb).data_ptr() == rgb.data_ptr());  // already so: no copy
  const auto vector = torch::randn({8, 3});
  CHECK(in_channels_last(vector).data_ptr() == vector.data_ptr());
}
