// core/ops/kernels: the float kernels of every instruction set this CPU runs against a plain
// double-precision reference on many shapes, and the choice of kernel by CPU and TTQ_KERNEL.
#include "catch.h"
#include "helpers.h"

#include <cstdlib>

#include "core/ops/kernels.h"
#include "core/ops/packed.h"

using namespace ttq::ops;
using ttq::test::runnable_paths;
using ttq::test::ternary_weight;

namespace {

struct Layer {
  int64_t rows, k;
  float wp, wn;
  torch::Tensor weight;  // [rows, k] of +wp, 0, -wn
  Packed packed;
  const uint32_t* planes() const { return reinterpret_cast<const uint32_t*>(packed.codes.data_ptr<uint8_t>()); }
  int64_t groups() const { return packed_groups(k); }
};

Layer ternary_layer(int64_t rows, int64_t k, uint64_t seed) {
  Layer l{rows, k, 0.3f, 0.2f};
  l.weight = ternary_weight({rows, k}, l.wp, l.wn, seed);
  l.packed = pack(l.weight, l.wp, l.wn);
  return l;
}


}  // namespace

TEST_CASE("ternary_rows of every path equals x·Wᵀ on many shapes, row ranges included") {
  // k off and on the 32-weight groups; n on both sides of the kernels' blocks of inputs.
  const std::vector<std::array<int64_t, 3>> shapes{{1, 1, 1}, {5, 7, 1}, {33, 100, 3}, {64, 32, 8}, {17, 31, 9},
                                                   {10, 65, 10}, {128, 257, 4}, {3, 64, 40}, {96, 1000, 1}};
  for (const auto path : runnable_paths()) {
    for (const auto& [rows, k, n] : shapes) {
      CAPTURE(path_name(path), rows, k, n);
      const Layer l = ternary_layer(rows, k, static_cast<uint64_t>(rows * k));
      auto x = torch::zeros({n, l.groups() * kGroup});  // zero past K, as the kernels require
      x.narrow(1, 0, k).copy_(torch::randn({n, k}));
      const auto want = torch::matmul(x.narrow(1, 0, k).to(torch::kDouble), l.weight.to(torch::kDouble).t());
      auto y = torch::full({n, rows}, -7.0f);
      const int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 2 ? rows - 1 : rows;  // a range: rows outside stay untouched
      ternary_rows(path, l.planes(), l.groups(), x.data_ptr<float>(), n, l.wp, l.wn, y.data_ptr<float>(), rows, r0, r1);
      CHECK(torch::allclose(y.narrow(1, r0, r1 - r0).to(torch::kDouble), want.narrow(1, r0, r1 - r0), 1e-5, 1e-5));
      if (r0 > 0) CHECK((y.select(1, 0) == -7.0f).all().item<bool>());
    }
  }
}

TEST_CASE("ternary_decode of every path gives the weights bit-exactly") {
  for (const auto path : runnable_paths()) {
    for (const auto& [rows, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 31}, {4, 64}, {7, 97}, {2, 1000}}) {
      CAPTURE(path_name(path), rows, k);
      const Layer l = ternary_layer(rows, k, 77);
      auto out = torch::empty({rows, k});
      ternary_decode(path, l.planes(), l.groups(), k, l.wp, l.wn, 0, rows, out.data_ptr<float>());
      CHECK(torch::equal(out, l.weight));
    }
  }
}

TEST_CASE("ternary_decode_scattered of every path puts each weight where a blocked layout says, and only there") {
  // Rows in blocks of `block` side by side (oneDNN's 8, 16, 32 and 64 output channels innermost; 1:
  // rows apart, which the vector paths leave to the scalar one), the places of a row in a shuffled
  // order; rows past the layer's up to the block (a padded layout) and the rows outside [r0, r1)
  // stay untouched.
  for (const auto path : runnable_paths()) {
    for (const auto& [rows, k, block] : std::vector<std::array<int64_t, 3>>{
             {64, 27, 16}, {96, 97, 32}, {24, 64, 8}, {40, 1000, 16}, {136, 9, 8}, {128, 40, 64}, {20, 33, 1}}) {
      CAPTURE(path_name(path), rows, k, block);
      const Layer l = ternary_layer(rows, k, static_cast<uint64_t>(rows + k));
      const int64_t blocks = (rows + block - 1) / block;
      const auto place = torch::randperm(k, torch::kLong) * block;  // each place of a row, block values apart
      std::vector<int64_t> row_at(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) row_at[static_cast<size_t>(r)] = r / block * block * k + r % block;
      auto out = torch::full({blocks * block * k}, -7.0f);
      const int64_t r0 = rows >= 64 ? 32 : 0;  // a range starting past the first rows, as a thread's share
      ternary_decode_scattered(path, l.planes(), l.groups(), k, l.wp, l.wn, r0, rows, row_at.data(),
                               place.data_ptr<int64_t>(), out.data_ptr<float>());
      auto want = torch::full({blocks * block * k}, -7.0f);
      const auto at = torch::tensor(row_at).narrow(0, r0, rows - r0).unsqueeze(1) + place.unsqueeze(0);
      want.index_put_({at.flatten()}, l.weight.narrow(0, r0, rows - r0).flatten());
      CHECK(torch::equal(out, want));
    }
  }
}

TEST_CASE("the kernel is the fastest this CPU runs, or TTQ_KERNEL's - one it cannot run is an error") {
  CHECK(cpu_supports(KernelPath::Portable));
  const auto paths = runnable_paths();
  CHECK(selected_path() == paths.back());
  for (const auto p : paths) {
    ttq::test::KernelVariable env(path_name(p));
    CHECK(selected_path() == p);
  }
  {
    ttq::test::KernelVariable env("sse9");
    CHECK_THROWS_WITH(selected_path(), Catch::Contains("TTQ_KERNEL=sse9 is not one of portable, avx2, avx512"));
  }
  if (!cpu_supports(KernelPath::Avx512)) {
    ttq::test::KernelVariable env("avx512");
    CHECK_THROWS_WITH(selected_path(), Catch::Contains("this CPU cannot run it"));
  }
}
