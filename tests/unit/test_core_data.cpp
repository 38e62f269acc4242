// core/data: preprocessing overrides and the per-sample augmentation that makes runs independent of
// batching (and so of world size and resume).
#include "catch.h"

#include "core/data.h"
#include "core/error.h"

using namespace ttq;

namespace {

// 20 random 3×8×8 uint8 images.
Dataset images() {
  torch::manual_seed(5);
  return {torch::randint(0, 256, {20, 3, 8, 8}, torch::kUInt8), torch::arange(20, torch::kInt64)};
}

torch::Tensor ids(std::vector<int64_t> v) { return torch::tensor(v, torch::kInt64); }

}  // namespace

TEST_CASE("a sample's augmentation depends on (seed, epoch, sample) only, not on its batch") {
  const Dataset d = images();
  const Preprocess pre{{0.5}, {0.25}, true, 2};
  const AugmentKey key{7, 3};
  const auto batch = prepare_inputs(d, ids({4, 9, 13, 2}), pre, key)[0];
  const auto alone = prepare_inputs(d, ids({9}), pre, key)[0];
  const auto other_batch = prepare_inputs(d, ids({0, 1, 9}), pre, key)[0];
  CHECK(torch::equal(batch[1], alone[0]));
  CHECK(torch::equal(batch[1], other_batch[2]));
  // Another epoch or seed draws other crops for at least one of these samples.
  const auto all = ids({0, 1, 2, 3, 4, 5, 6, 7});
  CHECK_FALSE(torch::equal(prepare_inputs(d, all, pre, key)[0], prepare_inputs(d, all, pre, AugmentKey{7, 4})[0]));
  CHECK_FALSE(torch::equal(prepare_inputs(d, all, pre, key)[0], prepare_inputs(d, all, pre, AugmentKey{8, 3})[0]));
}

TEST_CASE("uint8 images are scaled to 0..1 and normalized per channel, without augmentation unless keyed") {
  const Dataset d = images();
  const Preprocess pre{{0.1, 0.2, 0.3}, {0.5, 0.5, 0.5}, true, 2};
  const auto x = prepare_inputs(d, ids({3}), pre)[0];
  const auto expected = (d.inputs[0][3].to(torch::kFloat) / 255.0 -
                         torch::tensor({0.1f, 0.2f, 0.3f}).view({3, 1, 1})) / 0.5;
  CHECK(torch::allclose(x[0], expected, 1e-6, 1e-6));
  // A crop moves pixels: with a key and padding, some sample differs from its plain version.
  const auto all = ids({0, 1, 2, 3, 4, 5});
  CHECK_FALSE(torch::equal(prepare_inputs(d, all, pre, AugmentKey{1, 0})[0], prepare_inputs(d, all, pre)[0]));
}

TEST_CASE("token ids, masks and float inputs pass unchanged, in order, and are never augmented") {
  // A text model's two inputs: int64 token ids and a bool padding mask; then float features.
  const Dataset d({torch::arange(12, torch::kInt64).view({4, 3}), torch::arange(12).view({4, 3}).remainder(2).eq(0),
                   torch::rand({4, 2, 5, 5})},
                  torch::Tensor());
  CHECK_FALSE(d.labeled());
  const auto x = prepare_inputs(d, ids({1, 2}), Preprocess{{0.5}, {2.0}, true, 1}, AugmentKey{3, 0});
  REQUIRE(x.size() == 3);
  CHECK(x[0].scalar_type() == torch::kInt64);
  CHECK(torch::equal(x[0], torch::tensor({{3, 4, 5}, {6, 7, 8}})));
  CHECK(x[1].scalar_type() == torch::kBool);
  CHECK(torch::equal(x[1], d.inputs[1].narrow(0, 1, 2)));
  CHECK(x[2].sizes() == d.inputs[2].narrow(0, 1, 2).sizes());  // 4-D float: cropped and flipped, same shape
}

TEST_CASE("overrides replace the dataset's defaults, and inconsistent ones are usage errors") {
  const Preprocess defaults{{0.5}, {0.25}, true, 4};
  PreprocessOverrides o;
  const Preprocess same = apply_overrides(defaults, o);
  CHECK(same.mean == defaults.mean);
  CHECK(same.flip);
  CHECK(same.crop_padding == 4);
  o.flip = false;
  o.crop_padding = 0;
  o.mean = {0.1, 0.2, 0.3};
  o.std = {1, 1, 1};
  const Preprocess changed = apply_overrides(defaults, o);
  CHECK_FALSE(changed.flip);
  CHECK(changed.crop_padding == 0);
  CHECK(changed.std.size() == 3);
  o.std = {1, 1};
  CHECK_THROWS_WITH(apply_overrides(defaults, o), Catch::Contains("same number of values"));
  o.std = {1, 0, 1};
  CHECK_THROWS_WITH(apply_overrides(defaults, o), Catch::Contains("must be positive"));
}

TEST_CASE("keep_first narrows both splits") {
  DataSplits s;
  s.train = images();
  s.test = s.train.first(5);
  keep_first(s, 8);
  CHECK(s.train.size() == 8);
  CHECK(s.test.size() == 5);
}
