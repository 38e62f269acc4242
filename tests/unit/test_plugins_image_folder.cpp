// plugins/image_folder against torchvision's own code: an image folder's evaluation images as PIL
// and torchvision transform them, labels, bad files and the folder's settings.
#include "catch.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "plugins/dataset.h"

using namespace ttq;

namespace {

std::string run_python(const std::string& args) {
  const std::string command = std::string(TTQ_PYTHON) + " " + args;
  REQUIRE(std::system(command.c_str()) == 0);
  return command;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("an image folder's evaluation images equal torchvision's with PIL") {
  // Mixed sizes and aspect ratios, JPEG (some grayscale, some CMYK) and PNG.
  const std::string dir = "/tmp/ttq_unit_folder", ref = "/tmp/ttq_unit_folder_ref";
  std::filesystem::remove_all(dir);
  run_python(std::string(TTQ_SOURCE_DIR) + "/scripts/make_image_folder.py " + dir +
             " --classes 3 --train 1 --val 14 --mixed 40,400 --png --gray --cmyk --seed 3");
  for (const int size : {32, 64}) {
    run_python(std::string(TTQ_SOURCE_DIR) + "/tests/unit/torchvision_eval_transform.py " + dir + "/val " +
               std::to_string(size) + " " + ref);
    const auto theirs = read_bytes(ref + ".bin");
    const int64_t n = 42;
    REQUIRE(theirs.size() == static_cast<size_t>(n * 3 * size * size));
    const auto expected = torch::from_blob(const_cast<uint8_t*>(theirs.data()), {n, 3, size, size}, torch::kUInt8);
    for (const bool full_size_decoding : {true, false}) {
      LoadOptions options;
      options.image_folder.image_size = size;
      options.image_folder.workers = 2;
      options.image_folder.cache_images = full_size_decoding;  // which turns DCT downscaling off
      const DataSplits splits = load_dataset("imagefolder:" + dir, options);
      REQUIRE(splits.test.size() == n);
      const Dataset all = splits.test.select(torch::arange(n));
      std::ifstream labels(ref + ".labels");
      for (int64_t i = 0; i < n; ++i) {
        int64_t label;
        REQUIRE(labels >> label);
        CHECK(all.labels[i].item<int64_t>() == label);
      }
      if (full_size_decoding) {  // the same decoder and PIL's resampling: the same pixels
        CHECK(torch::equal(all.inputs.at(0), expected));
        continue;
      }
      // Decoded at 1/2 to 1/8 in the DCT domain then resampled, against decoded at full size then
      // resampled: measured 0.9 grey levels (of 255) on average, at most 2.7 for one image.
      const auto diff = (all.inputs.at(0).to(torch::kFloat) - expected.to(torch::kFloat)).abs();
      INFO("size " << size << ": mean |difference| " << diff.mean().item<float>() << ", the largest of an image "
                   << diff.mean({1, 2, 3}).max().item<float>());
      CHECK(diff.mean().item<float>() < 1.5);
      CHECK(diff.mean({1, 2, 3}).max().item<float>() < 4.0);
    }
  }
}

TEST_CASE("a corrupt image is an input error naming the file, or with skip_bad_images the next of its class") {
  const std::string dir = "/tmp/ttq_unit_corrupt";
  std::filesystem::remove_all(dir);
  run_python(std::string(TTQ_SOURCE_DIR) + "/scripts/make_image_folder.py " + dir +
             " --classes 2 --train 3 --val 0 --size 48x40 --flat --seed 5");
  // class0: 000000, 000002, 000004; the middle one truncated.
  const std::string bad = dir + "/class0/000002.JPEG";
  const auto bytes = read_bytes(bad);
  std::ofstream(bad, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size() / 2);
  LoadOptions options;
  options.image_folder.val_fraction = 0;
  const auto idx = torch::arange(6);
  try {
    load_dataset("imagefolder:" + dir, options).train.select(idx);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Input);
    CHECK_THAT(e.what(), Catch::Contains(bad));
  }
  options.image_folder.skip_bad_images = true;
  const Dataset skipped = load_dataset("imagefolder:" + dir, options).train.select(idx);
  const auto images = skipped.inputs.at(0);
  CHECK(torch::equal(images[1], images[2]));  // 000002 replaced by 000004, the next of class 0
  CHECK(!torch::equal(images[0], images[1]));
  CHECK(skipped.labels[1].item<int64_t>() == 0);
}

TEST_CASE("the image folder validates its own settings, each out-of-range one a usage error naming its flag") {
  const std::string dir = "/tmp/ttq_unit_settings";
  std::filesystem::remove_all(dir);
  run_python(std::string(TTQ_SOURCE_DIR) + "/scripts/make_image_folder.py " + dir +
             " --classes 2 --train 2 --val 0 --size 16x16 --flat --seed 1");
  const auto refused = [&](const std::function<void(ImageFolderOptions&)>& change, const std::string& flag) {
    LoadOptions options;
    change(options.image_folder);
    try {
      load_dataset("imagefolder:" + dir, options);
      FAIL("no error for " << flag);
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Usage);
      CHECK_THAT(e.what(), Catch::Contains(flag));
    }
  };
  refused([](ImageFolderOptions& o) { o.val_fraction = 1.0; }, "--val-fraction");
  refused([](ImageFolderOptions& o) { o.val_fraction = -0.1; }, "--val-fraction");
  refused([](ImageFolderOptions& o) { o.image_size = 0; }, "--image-size");
  refused([](ImageFolderOptions& o) { o.workers = 0; }, "--workers");
  refused([](ImageFolderOptions& o) { o.max_image_pixels = 0; }, "--max-image-pixels");
  refused([](ImageFolderOptions& o) { o.crop_scale = {0.5, 0.2}; }, "--crop-scale");
  LoadOptions half;
  half.image_folder.val_fraction = 0.5;
  const DataSplits splits = load_dataset("imagefolder:" + dir, half);
  CHECK(splits.train.size() == 2);
  CHECK(splits.test.size() == 2);
}
