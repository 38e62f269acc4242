// Image files to RGB pixels, and the geometry of torchvision's standard transforms, for the image
// folder dataset (plugins/image_folder.cpp).
//
// JPEG goes through libjpeg-turbo, decoding at 1/2, 1/4 or 1/8 of the size in the DCT domain when
// the caller needs at most that much (as PIL's draft mode and DALI do: most of a large JPEG's
// decoding cost is skipped); PNG and the other formats through stb_image. Resizing is stb's
// triangle filter scaled to the ratio: PIL's bilinear filter with antialiasing, which torchvision
// uses on PIL images.
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

// A rectangle of an image, in its pixels (fractional after a downscaled decode).
struct CropBox {
  double left = 0, top = 0, width = 0, height = 0;
};

// torchvision.transforms.RandomResizedCrop.get_params(image, scale, ratio), with its random numbers
// taken from `draws` in the same order (per attempt: the area's scale, the log aspect ratio, then,
// for the attempt that fits, top and left) and its float32 arithmetic where it has it.
CropBox random_resized_crop(int width, int height, std::array<double, 2> scale, std::array<double, 2> ratio,
                            Draws& draws);

// torchvision's Resize(resize) (the shorter side to `resize`, the longer scaled and truncated)
// followed by CenterCrop(size), as the rectangle of the original image that the crop shows.
CropBox resize_center_crop(int width, int height, int resize, int size);

struct Rgb {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // height × width × 3
};

// Decodes `path` as RGB (grayscale and CMYK converted). `box_of(width, height)` gets the full size
// from the header and returns the rectangle the caller will use; a JPEG is then decoded at the
// smallest 1/d (d = 1, 2, 4, 8) that leaves the rectangle at least `min_side` pixels on each side.
// The returned box is that rectangle in the decoded image's pixels. Input errors, naming the file,
// for unreadable or corrupt images and for images over `max_pixels` or 100:1 before decoding.
struct DecodedCrop {
  Rgb image;
  CropBox box;
};
DecodedCrop decode_image(const std::string& path, int64_t max_pixels, int min_side,
                         const std::function<CropBox(int, int)>& box_of);

// `box` of `image` resized to size × size into `chw` (3 × size × size bytes).
void resize_box(const Rgb& image, const CropBox& box, int size, uint8_t* chw);

}  // namespace ttq
