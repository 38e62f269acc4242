// imagefolder:DIR — DIR/<class>/<image> (torchvision's ImageFolder), or DIR/train/<class>/... with
// DIR/val/<class>/... (or test/): the ImageNet layout. Only the directory walk happens at start; the
// images are decoded per batch (plugins/images.h) by worker threads, so memory is bounded by the
// batch and not by the dataset. Training samples get torchvision's RandomResizedCrop, evaluation
// its Resize(size / 0.875) + CenterCrop(size); random flips are the common preprocessing's.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <unistd.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <set>

#include "core/error.h"
#include "core/util.h"
#include "plugins/dataset.h"
#include "plugins/images.h"

namespace ttq {
namespace {

namespace fs = std::filesystem;

int64_t physical_memory() {
  return static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

struct FolderTransform {
  int size = 32;
  int64_t max_pixels = 0;
  std::array<double, 2> scale{0.08, 1.0};
  std::array<double, 2> ratio{3.0 / 4.0, 4.0 / 3.0};
  bool random_crop = true;
  int workers = 1;
  bool skip_bad = false;
  int64_t cache_budget = 0;  // bytes of decoded images kept; 0: no cache
};

// What samples of one split share across threads and across the copies first() makes: the images
// found bad so far, and the cache of decoded images.
struct SharedState {
  std::mutex mutex;
  std::set<size_t> bad;
  std::vector<std::shared_ptr<const Rgb>> cache;
  int64_t cached_bytes = 0;
  bool cache_full = false;
};

class ImageFolderSource final : public SampleSource {
 public:
  ImageFolderSource(std::vector<std::string> files, std::vector<int64_t> labels, FolderTransform transform,
                    std::shared_ptr<SharedState> state = nullptr)
      : files_(std::move(files)), labels_(std::move(labels)), transform_(transform),
        state_(state ? std::move(state) : std::make_shared<SharedState>()) {
    if (transform_.cache_budget > 0 && state_->cache.size() < files_.size()) state_->cache.resize(files_.size());
  }

  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  int threads() const override { return transform_.workers; }

  std::vector<torch::Tensor> load(const torch::Tensor& idx, const std::optional<AugmentKey>& augment) const override {
    const int size = transform_.size;
    auto out = torch::empty({idx.numel(), 3, size, size}, torch::kUInt8);
    const auto* ids = idx.data_ptr<int64_t>();
    uint8_t* pixels = out.data_ptr<uint8_t>();
    const size_t per_image = static_cast<size_t>(3) * size * size;
    for (int64_t i = 0; i < idx.numel(); ++i) {
      const auto sample = static_cast<size_t>(ids[i]);
      uint8_t* chw = pixels + static_cast<size_t>(i) * per_image;
      for (size_t file = sample;;) try {
          transform(file, sample, augment, chw);
          break;
        } catch (const Error& e) {
          if (!transform_.skip_bad || e.kind() != ErrorKind::Input) throw;
          file = replacement(file, e.what());
        }
    }
    return {out};
  }

  std::shared_ptr<const SampleSource> first(int64_t n) const override {
    const auto k = static_cast<size_t>(std::min<int64_t>(n, size()));
    return std::make_shared<ImageFolderSource>(std::vector<std::string>(files_.begin(), files_.begin() + k),
                                               std::vector<int64_t>(labels_.begin(), labels_.begin() + k), transform_,
                                               state_);
  }

 private:
  // File `file`, as sample `sample`'s crop (its random draws keyed by the sample, so that a replaced
  // image gets the draws the sample would have had), into `chw`.
  void transform(size_t file, size_t sample, const std::optional<AugmentKey>& augment, uint8_t* chw) const {
    const int size = transform_.size;
    const bool train = augment && transform_.random_crop;
    // A stream of its own per (seed, epoch, sample): not the flip's (core/data.cpp).
    Draws draws(train ? augment->seed * 0x9e3779b97f4a7c15ull ^ (uint64_t(augment->epoch) << 40) ^
                            uint64_t(sample) * 0xc2b2ae3d27d4eb4full ^ 0x165667b19e3779f9ull
                      : 0);
    const auto plan_of = [&](int w, int h) {
      return train ? crop_then_resize(random_resized_crop(w, h, transform_.scale, transform_.ratio, draws), size)
                   : resize_then_center_crop(w, h, static_cast<int>(size / 0.875), size);
    };
    thread_local Decoded decoded;
    if (transform_.cache_budget == 0) {
      decode_image(files_[file], transform_.max_pixels, size, plan_of, decoded);
      return resample(decoded.image, decoded.plan, chw);
    }
    // Cached images are decoded at full size (no DCT downscaling), whether or not they fit in the
    // cache, so that the result does not depend on what was cached when.
    std::shared_ptr<const Rgb> image;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      image = state_->cache[file];
    }
    if (image) return resample(*image, plan_of(image->width, image->height), chw);
    decode_image(files_[file], transform_.max_pixels, 0, plan_of, decoded);
    resample(decoded.image, decoded.plan, chw);
    remember(file, std::make_shared<const Rgb>(decoded.image));
  }

  void remember(size_t file, std::shared_ptr<const Rgb> image) const {
    const auto bytes = static_cast<int64_t>(image->pixels.size());
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->cached_bytes + bytes > transform_.cache_budget) {
      if (!state_->cache_full)
        spdlog::info("image cache full at {} MiB: further images are decoded when used", state_->cached_bytes >> 20);
      state_->cache_full = true;
      return;
    }
    state_->cached_bytes += bytes;
    state_->cache[file] = std::move(image);
  }

  // --skip-bad-images: records `file` as bad and returns the next file of its class, in the order
  // of the index, not known to be bad (the same one whichever thread or run asks).
  size_t replacement(size_t file, const std::string& reason) const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->bad.insert(file).second)
      spdlog::warn("skipping {} ({} bad image{} so far)", reason, state_->bad.size(), state_->bad.size() == 1 ? "" : "s");
    // Files are indexed class by class: the class is a contiguous range.
    size_t begin = file, end = file + 1;
    while (begin > 0 && labels_[begin - 1] == labels_[file]) --begin;
    while (end < files_.size() && labels_[end] == labels_[file]) ++end;
    for (size_t k = 1; k < end - begin; ++k) {
      const size_t next = begin + (file - begin + k) % (end - begin);
      if (!state_->bad.count(next)) return next;
    }
    throw input_error(fmt::format("every image of class {} is unreadable ({})", labels_[file], reason));
  }

  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
  FolderTransform transform_;
  std::shared_ptr<SharedState> state_;
};

std::vector<std::string> class_names(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool is_image(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

// The image files of each class folder under `dir`, sorted by name.
std::vector<std::vector<std::string>> index_folder(const fs::path& dir, const std::vector<std::string>& classes) {
  std::vector<std::vector<std::string>> files(classes.size());
  for (size_t k = 0; k < classes.size(); ++k) {
    if (!fs::is_directory(dir / classes[k])) continue;
    for (const auto& e : fs::directory_iterator(dir / classes[k]))
      if (is_image(e.path()) && e.is_regular_file()) files[k].push_back(e.path().string());
    std::sort(files[k].begin(), files[k].end());
  }
  return files;
}

struct Split {
  std::vector<std::string> files;
  std::vector<int64_t> labels;
};

void append(Split& split, const std::string& file, size_t label) {
  split.files.push_back(file);
  split.labels.push_back(static_cast<int64_t>(label));
}

// Held out for validation: in each class, the files whose name hashes lowest (XXH64: the same on
// every platform), round(fraction · n) of them (at least one when the class has two or more):
// deterministic, stratified, and stable as files are added.
std::pair<Split, Split> hold_out(const std::vector<std::vector<std::string>>& files, double fraction) {
  Split train, val;
  for (size_t k = 0; k < files.size(); ++k) {
    const size_t n = files[k].size();
    std::vector<std::pair<uint64_t, size_t>> ranked;  // (hash of the name, index)
    for (size_t i = 0; i < n; ++i) {
      const std::string name = fs::path(files[k][i]).filename().string();
      ranked.push_back({XXH64(name.data(), name.size(), 0), i});
    }
    std::sort(ranked.begin(), ranked.end());
    size_t held = static_cast<size_t>(std::lround(fraction * static_cast<double>(n)));
    if (fraction > 0 && n >= 2) held = std::clamp<size_t>(held, 1, n - 1);
    std::vector<bool> is_held(n, false);
    for (size_t i = 0; i < held; ++i) is_held[ranked[i].second] = true;
    for (size_t i = 0; i < n; ++i) append(is_held[i] ? val : train, files[k][i], k);
  }
  return {train, val};
}

Split all_of(const std::vector<std::vector<std::string>>& files) {
  Split s;
  for (size_t k = 0; k < files.size(); ++k)
    for (const auto& f : files[k]) append(s, f, k);
  return s;
}

Dataset as_dataset(Split split, const FolderTransform& transform, const fs::path& dir) {
  if (split.files.empty()) throw input_error(fmt::format("{}: no PNG or JPEG images in class folders", dir.string()));
  auto labels = torch::tensor(split.labels, torch::kInt64);
  return {std::make_shared<ImageFolderSource>(std::move(split.files), std::move(split.labels), transform), labels};
}

// Every setting's bounds, in one place (the flags that set them do not check them).
void validate(const ImageFolderOptions& options) {
  if (options.image_size < 1) throw usage_error("--image-size must be positive");
  if (options.workers < 1) throw usage_error("--workers must be at least 1");
  if (options.max_image_pixels < 1) throw usage_error("--max-image-pixels must be positive");
  if (!(options.crop_scale[0] > 0 && options.crop_scale[0] <= options.crop_scale[1] && options.crop_scale[1] <= 1))
    throw usage_error("--crop-scale needs 0 < LOW <= HIGH <= 1");
  if (!(options.val_fraction >= 0 && options.val_fraction < 1)) throw usage_error("--val-fraction must be in [0, 1)");
}

DataSplits load_imagefolder(const std::string& path, const LoadOptions& load_options) {
  if (!fs::is_directory(path)) throw input_error(fmt::format("{}: not a folder", path));
  const ImageFolderOptions& options = load_options.image_folder;
  validate(options);
  FolderTransform transform;
  transform.size = options.image_size;
  transform.max_pixels = options.max_image_pixels;
  transform.scale = options.crop_scale;
  transform.random_crop = options.random_crop;
  transform.workers = options.workers;
  transform.skip_bad = options.skip_bad_images;
  if (options.cache_images) transform.cache_budget = physical_memory() / 4;
  // Every batch allocates and frees tens of MiB (images, their float conversion); glibc would map
  // and unmap each, and a fifth of the loader's time went to page faults. Keep them in the heap
  // (ttq's main does so too; a program that only links the loader gets the same).
  keep_freed_memory_for_reuse();

  const fs::path root(path);
  const fs::path val_dir = fs::is_directory(root / "val") ? root / "val" : root / "test";
  const bool split = fs::is_directory(root / "train") && fs::is_directory(val_dir);
  const fs::path train_dir = split ? root / "train" : root;
  const auto classes = class_names(train_dir);
  if (classes.empty()) throw input_error(fmt::format("{}: no class folders", train_dir.string()));
  DataSplits s;
  if (split) {
    // ImageNet's train/ is 1.28 million files to list: not for a caller that reads val/ alone.
    if (!load_options.test_split_only)
      s.train = as_dataset(all_of(index_folder(train_dir, classes)), transform, train_dir);
    s.test = as_dataset(all_of(index_folder(val_dir, classes)), transform, val_dir);
  } else if (options.val_fraction > 0) {
    auto [train, val] = hold_out(index_folder(train_dir, classes), options.val_fraction);
    spdlog::info("{}: no train/ and val/ folders; {} of {} images held out for validation (--val-fraction {})", path,
                 val.files.size(), train.files.size() + val.files.size(), options.val_fraction);
    s.train = as_dataset(std::move(train), transform, train_dir);
    s.test = val.files.empty() ? s.train : as_dataset(std::move(val), transform, train_dir);
  } else {
    s.train = as_dataset(all_of(index_folder(train_dir, classes)), transform, train_dir);
    s.test = s.train;
  }
  s.num_classes = static_cast<int64_t>(classes.size());
  s.defaults = {{0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}, true, 0};  // ImageNet statistics
  return s;
}

}  // namespace

void register_image_folder() {
  register_dataset_kind({"imagefolder",
                         "one sub-folder per class of PNG/JPEG files (train/ and val/ or test/ splits if present), "
                         "decoded per batch",
                         load_imagefolder});
}

}  // namespace ttq
