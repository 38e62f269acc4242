// Image files to RGB pixels, and the geometry of torchvision's standard transforms, for the image
// folder dataset (plugins/image_folder.cpp).
//
// JPEG goes through libjpeg-turbo, decoding at 1/2, 1/4 or 1/8 of the size in the DCT domain when
// the caller needs at most that much (as PIL's draft mode and DALI do: most of a large JPEG's
// decoding cost is skipped); PNG through stb_image. Resizing is PIL's bilinear resampling, written
// here: torchvision's transforms run it on PIL images, so matching it gives the same pixels, and
// stb_image_resize (v1, Debian's) asserts on fractional source regions.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ttq {

// Uniform draws in [0, 1) for one sample, from splitmix64 on a key: the same key gives the same
// draws on any thread, in any process.
class Draws {
 public:
  explicit Draws(uint64_t key) : state_(key) {}
  double uniform();

 private:
  uint64_t state_;
};

// A rectangle of an image, in its pixels.
struct CropBox {
  double left = 0, top = 0, width = 0, height = 0;
};

// torchvision.transforms.RandomResizedCrop.get_params(image, scale, ratio), with its random numbers
// taken from `draws` in the same order (per attempt: the area's scale, the log aspect ratio, then,
// for the attempt that fits, top and left) and its float32 arithmetic where it has it.
CropBox random_resized_crop(int width, int height, std::array<double, 2> scale, std::array<double, 2> ratio,
                            Draws& draws);

// How one axis of an output image comes from its source, in the terms of PIL's Image.resize: the
// source interval [box0, box1) is resized to `total` pixels, of which the output keeps `size` from
// `first`; the filter reads only source pixels in [lo, hi) (the crop, as torchvision crops before
// it resizes). Fractional after a downscaled decode.
struct AxisResample {
  double lo = 0, hi = 0, box0 = 0, box1 = 0;
  int total = 0, first = 0;
};
struct Resample {
  AxisResample x, y;
  int size = 0;  // of the square output
};

// Training: the crop `box` resized to size × size (torchvision's resized_crop).
Resample crop_then_resize(const CropBox& box, int size);
// Evaluation: torchvision's Resize(resize) (the shorter side to `resize`, the longer scaled and
// truncated), then CenterCrop(size).
Resample resize_then_center_crop(int width, int height, int resize, int size);

struct Rgb {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // height × width × 3
};

// Decodes `path` as RGB (grayscale and CMYK converted as PIL converts them). `plan_of(width,
// height)` gets the full size from the header and returns the resampling the caller will do; a
// JPEG is then decoded at the smallest 1/d (d = 1, 2, 4, 8) that leaves the visible part at least
// `min_side` pixels on each side, and only down to the last row the plan reads; the plan returned
// is in the decoded image's pixels. min_side 0: the whole image at full size (to keep it). Input
// errors, naming the file, for unreadable or corrupt images and for images over `max_pixels` or
// 100:1 before decoding.
struct Decoded {
  Rgb image;
  Resample plan;
};
// `out`'s buffers are reused (a thread may keep one Decoded for all its images).
void decode_image(const std::string& path, int64_t max_pixels, int min_side,
                  const std::function<Resample(int, int)>& plan_of, Decoded& out);

// The output of `plan` from `image`, into `chw` (3 × size × size bytes): PIL's bilinear resampling
// (a triangle filter widened by the scale, so antialiased; fixed-point as PIL's 8-bit path), so
// that without DCT downscaling the pixels equal torchvision's on PIL images.
void resample(const Rgb& image, const Resample& plan, uint8_t* chw);

}  // namespace ttq
