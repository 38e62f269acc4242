// Benchmark of the image folder loader (scripts/bench_loader.sh): training batches of DIR decoded,
// cropped (RandomResizedCrop), flipped and normalized as finetune prepares them, on WORKERS threads;
// prints images per second, after one warm-up batch, over the next IMAGES images.
// Usage: ttq_bench_loader DIR SIZE WORKERS BATCH IMAGES
#include <ATen/Parallel.h>

#include <chrono>

#include "plugins/dataset.h"

using namespace ttq;

int main(int argc, char** argv) {
  if (argc != 6) {
    fmt::print(stderr, "usage: ttq_bench_loader DIR SIZE WORKERS BATCH IMAGES\n");
    return 2;
  }
  LoadOptions options;
  options.image_folder.image_size = std::stoi(argv[2]);
  options.image_folder.workers = std::stoi(argv[3]);
  options.image_folder.val_fraction = 0;
  const int64_t batch = std::stoll(argv[4]), images = std::stoll(argv[5]);
  at::set_num_threads(1);  // the loader's threads do all the work (decoding, conversion, flips)
  const DataSplits data = load_dataset(std::string("imagefolder:") + argv[1], options);
  Preprocess pre = data.defaults;
  pre.flip = true;
  const auto order = torch::randperm(data.train.size(), torch::TensorOptions().dtype(torch::kInt64));
  const auto take = [&](int64_t first) {
    return prepare_inputs(data.train, order.slice(0, first % data.train.size(), first % data.train.size() + batch),
                          pre, AugmentKey{1, 0});
  };
  take(0);
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0;
  for (int64_t first = batch; done < images; first += batch) done += take(first).front().size(0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("ttq_images_per_second={:.1f}\n", static_cast<double>(done) / seconds);
}
