// plugins/images against torchvision's own code: the crop geometry fed the same random draws, and
// Resize then CenterCrop as torchvision computes them.
#include "catch.h"

#include <cstdlib>
#include <fstream>

#include "plugins/images.h"

using namespace ttq;

TEST_CASE("random_resized_crop gives torchvision's boxes for the same draws") {
  const std::string in = "/tmp/ttq_crops_in.txt", out = "/tmp/ttq_crops_out.txt";
  std::ofstream cases(in);
  std::vector<CropBox> ours;
  Draws sizes(7);
  for (int c = 0; c < 500; ++c) {
    const int w = 1 + static_cast<int>(sizes.uniform() * 600), h = 1 + static_cast<int>(sizes.uniform() * 600);
    // Narrow ranges and extreme ratios reach the central-crop fallback.
    const std::array<double, 2> scale = c % 5 == 0 ? std::array<double, 2>{0.9, 1.0} : std::array<double, 2>{0.08, 1.0};
    const std::array<double, 2> ratio = c % 7 == 0 ? std::array<double, 2>{3.0, 4.0} : std::array<double, 2>{0.75, 4.0 / 3};
    Draws draws(1000 + c), replay(1000 + c);
    ours.push_back(random_resized_crop(w, h, scale, ratio, draws));
    cases.precision(17);
    cases << w << ' ' << h << ' ' << scale[0] << ' ' << scale[1] << ' ' << ratio[0] << ' ' << ratio[1];
    for (int d = 0; d < 22; ++d) cases << ' ' << replay.uniform();
    cases << '\n';
  }
  cases.close();
  const std::string command = std::string(TTQ_PYTHON) + " " + TTQ_SOURCE_DIR + "/tests/unit/torchvision_crops.py < " +
                              in + " > " + out;
  REQUIRE(std::system(command.c_str()) == 0);
  std::ifstream theirs(out);
  for (size_t c = 0; c < ours.size(); ++c) {
    double left, top, width, height;
    REQUIRE(theirs >> left >> top >> width >> height);
    INFO("case " << c);
    CHECK(ours[c].left == left);
    CHECK(ours[c].top == top);
    CHECK(ours[c].width == width);
    CHECK(ours[c].height == height);
  }
}

TEST_CASE("resize_then_center_crop is Resize(256) then CenterCrop(224)") {
  // 500x375: Resize(256) gives 341x256 (int(256 * 500 / 375)); the 224 crop starts at
  // round(117 / 2) = 58 and round(32 / 2) = 16.
  const Resample plan = resize_then_center_crop(500, 375, 256, 224);
  CHECK(plan.x.total == 341);
  CHECK(plan.x.first == 58);
  CHECK(plan.y.total == 256);
  CHECK(plan.y.first == 16);
  CHECK(plan.x.box1 == 500);
  CHECK(plan.y.box1 == 375);
}

