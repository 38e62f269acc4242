// core/ops/packed: the two-bit-plane format of ternary weights: bit-exact round trips on shapes off
// the 32-weight groups, the planes' layout as packed.h specifies it, and codes that break it refused.
#include "catch.h"
#include "helpers.h"

#include "core/ops/packed.h"

using namespace ttq::ops;
using ttq::test::ternary_weight;

TEST_CASE("pack then unpack is bit-exact for any shape and any scales, negative ones included") {
  const std::vector<std::vector<int64_t>> shapes{{1, 1}, {5, 7}, {3, 32}, {2, 33}, {17, 100}, {8, 3, 3, 3}, {4, 1, 5, 5}};
  const std::vector<std::pair<float, float>> scales{{0.3f, 0.2f}, {1e-8f, 5.0f}, {-0.1f, 0.4f}};
  uint64_t seed = 1;
  for (const auto& shape : shapes) {
    for (const auto& [wp, wn] : scales) {
      CAPTURE(shape, wp, wn);
      const auto w = ternary_weight(shape, wp, wn, seed++);
      const Packed p = pack(w, wp, wn);
      const int64_t k = w.numel() / shape[0];
      CHECK(p.codes.sizes() == torch::IntArrayRef{shape[0], packed_groups(k) * 8});
      CHECK(p.codes.numel() == packed_bytes(shape));
      CHECK(torch::equal(p.scales, torch::tensor({wp, wn})));
      check_packed(p.codes, p.scales, shape);
      check_packed_bits(p.codes, shape);
      CHECK(torch::equal(unpack(p.codes, p.scales, shape), w));
      std::vector<float> rows(static_cast<size_t>(shape[0] * k));
      decode_rows(p.codes, k, wp, wn, 0, shape[0], rows.data());
      CHECK(torch::equal(torch::from_blob(rows.data(), w.sizes()), w));
    }
  }
}

TEST_CASE("a group is the positive plane, then the negative one, bit i for weight 32g + i") {
  // Row 0: weight 0 positive, weight 33 negative (group 1, bit 1); row 1: weight 31 negative.
  auto w = torch::zeros({2, 40});
  w[0][0] = 0.5f;
  w[0][33] = -0.25f;
  w[1][31] = -0.25f;
  const Packed p = pack(w, 0.5f, 0.25f);
  const auto* planes = reinterpret_cast<const uint32_t*>(p.codes.data_ptr<uint8_t>());
  CHECK(std::vector<uint32_t>(planes, planes + 8) == std::vector<uint32_t>{1u, 0u, 0u, 2u, 0u, 1u << 31, 0u, 0u});
}

TEST_CASE("values that are no level, codes of another shape and overlapping planes are refused") {
  auto w = ternary_weight({4, 40}, 0.3f, 0.2f, 9);
  w[2][5] = 0.31f;
  CHECK_THROWS_WITH(pack(w, 0.3f, 0.2f), Catch::Contains("0.31"));
  const Packed p = pack(ternary_weight({4, 40}, 0.3f, 0.2f, 9), 0.3f, 0.2f);
  CHECK_THROWS(check_packed(p.codes, p.scales, {4, 73}));
  CHECK_THROWS(check_packed(p.codes.to(torch::kInt8), p.scales, {4, 40}));
  CHECK_THROWS(check_packed(p.codes, torch::ones({3}), {4, 40}));
  auto overlap = p.codes.clone();
  auto* planes = reinterpret_cast<uint32_t*>(overlap.data_ptr<uint8_t>());
  planes[0] |= 1u;
  planes[1] |= 1u;  // weight 0 both positive and negative
  CHECK_THROWS(check_packed_bits(overlap, {4, 40}));
  auto past_k = p.codes.clone();
  reinterpret_cast<uint32_t*>(past_k.data_ptr<uint8_t>())[2] |= 1u << 30;  // weight 62 of a 40-weight row
  CHECK_THROWS(check_packed_bits(past_k, {4, 40}));
}
