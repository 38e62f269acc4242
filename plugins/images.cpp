#include "plugins/images.h"

#include <fmt/format.h>
#include <stb_image.h>
#include <stb_image_resize.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
// jpeglib.h needs FILE and size_t declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "core/error.h"
#include "core/util.h"

namespace ttq {

double Draws::uniform() {
  uint64_t x = (state_ += 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return static_cast<double>((x ^ (x >> 31)) >> 11) * 0x1.0p-53;
}

namespace {

// torch.empty(1).uniform_(a, b).item(): a + (b - a) · u, stored as float32.
double uniform_float32(double a, double b, double u) { return static_cast<float>(a + (b - a) * u); }

// torch.randint(low, high, (1,)).item() with the draw u.
int64_t randint(int64_t low, int64_t high, double u) {
  return std::min(high - 1, low + static_cast<int64_t>(u * static_cast<double>(high - low)));
}

}  // namespace

CropBox random_resized_crop(int width, int height, std::array<double, 2> scale, std::array<double, 2> ratio,
                            Draws& draws) {
  const double area = static_cast<double>(width) * height;
  const float log_lo = std::log(static_cast<float>(ratio[0])), log_hi = std::log(static_cast<float>(ratio[1]));
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * uniform_float32(scale[0], scale[1], draws.uniform());
    const double aspect = std::exp(static_cast<float>(uniform_float32(log_lo, log_hi, draws.uniform())));
    // Python's round(): halves to even, as nearbyint in the default rounding mode.
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target * aspect)));
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target / aspect)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int64_t top = randint(0, height - h + 1, draws.uniform());
      const int64_t left = randint(0, width - w + 1, draws.uniform());
      return {static_cast<double>(left), static_cast<double>(top), static_cast<double>(w), static_cast<double>(h)};
    }
  }
  // torchvision's fallback: the central crop within the ratio range.
  const double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < std::min(ratio[0], ratio[1]))
    h = static_cast<int>(std::nearbyint(w / std::min(ratio[0], ratio[1])));
  else if (in_ratio > std::max(ratio[0], ratio[1]))
    w = static_cast<int>(std::nearbyint(h * std::max(ratio[0], ratio[1])));
  return {static_cast<double>((width - w) / 2), static_cast<double>((height - h) / 2), static_cast<double>(w),
          static_cast<double>(h)};
}

CropBox resize_center_crop(int width, int height, int resize, int size) {
  // Resize(int): the shorter side becomes `resize`, the longer int(resize · long / short).
  const bool wide = width >= height;
  const int short_side = wide ? height : width, long_side = wide ? width : height;
  const int resized_long = static_cast<int>(static_cast<int64_t>(resize) * long_side / short_side);
  const int rw = wide ? resized_long : resize, rh = wide ? resize : resized_long;
  // CenterCrop: int(round((resized - size) / 2.0)) on each axis.
  const double top = std::nearbyint((rh - size) / 2.0), left = std::nearbyint((rw - size) / 2.0);
  const double sx = static_cast<double>(width) / rw, sy = static_cast<double>(height) / rh;
  return {left * sx, top * sy, size * sx, size * sy};
}

namespace {

constexpr double kMaxAspectRatio = 100;

void check_header(const std::string& path, int w, int h, int64_t max_pixels) {
  const int64_t pixels = int64_t{w} * h;
  if (pixels > max_pixels)
    throw input_error(fmt::format("{}: {}x{} image ({} pixels) is over the limit of {} (raise it with "
                                  "--max-image-pixels)", path, w, h, pixels, max_pixels));
  if (std::max(w, h) > kMaxAspectRatio * std::min(w, h))
    throw input_error(fmt::format("{}: {}x{} image has an aspect ratio over {:.0f}:1", path, w, h, kMaxAspectRatio));
}

// The largest d in {1, 2, 4, 8} that leaves `box` at least min_side pixels on each side.
int downscale_for(const CropBox& box, int min_side) {
  int d = 1;
  while (d < 8 && std::min(box.width, box.height) / (2 * d) >= min_side) d *= 2;
  return d;
}

CropBox scaled(const CropBox& box, double sx, double sy) {
  return {box.left * sx, box.top * sy, box.width * sx, box.height * sy};
}

// libjpeg reports errors through a callback that must not return: longjmp back to the decoder.
struct JpegErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// Warnings stay quiet, except a truncated file, which is an error as in PIL.
void jpeg_warn(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegErrors*>(cinfo->err)->truncated = true;
}

// The libjpeg calls, between a setjmp and the last libjpeg call no C++ object with a destructor is
// created (longjmp would skip it). With denom 0 only the header: size and colour space.
struct JpegImage {
  int width = 0, height = 0, channels = 0;
  bool cmyk = false, adobe = false;
};
bool run_jpeg(const std::vector<uint8_t>& bytes, unsigned denom, JpegImage& info, std::vector<uint8_t>& pixels,
              JpegErrors& errors) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&errors.mgr);
  errors.mgr.error_exit = jpeg_fail;
  errors.mgr.emit_message = jpeg_warn;
  errors.truncated = false;
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  info.cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  info.width = static_cast<int>(cinfo.image_width), info.height = static_cast<int>(cinfo.image_height);
  if (denom == 0) {
    jpeg_destroy_decompress(&cinfo);
    return true;
  }
  cinfo.out_color_space = info.cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = denom;
  jpeg_start_decompress(&cinfo);
  info.width = static_cast<int>(cinfo.output_width), info.height = static_cast<int>(cinfo.output_height);
  info.channels = cinfo.output_components;
  pixels.resize(static_cast<size_t>(info.width) * info.height * info.channels);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = pixels.data() + static_cast<size_t>(cinfo.output_scanline) * info.width * info.channels;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  info.adobe = cinfo.saw_Adobe_marker;
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (errors.truncated) std::snprintf(errors.message, sizeof errors.message, "truncated JPEG data");
  return !errors.truncated;
}

DecodedCrop decode_jpeg(const std::vector<uint8_t>& bytes, const std::string& path, int64_t max_pixels, int min_side,
                        const std::function<CropBox(int, int)>& box_of) {
  JpegErrors errors{};
  JpegImage full, decoded;
  std::vector<uint8_t> pixels;
  if (!run_jpeg(bytes, 0, full, pixels, errors))
    throw input_error(fmt::format("{}: cannot decode image ({})", path, errors.message));
  check_header(path, full.width, full.height, max_pixels);
  const CropBox box = box_of(full.width, full.height);
  if (!run_jpeg(bytes, static_cast<unsigned>(downscale_for(box, min_side)), decoded, pixels, errors))
    throw input_error(fmt::format("{}: cannot decode image ({})", path, errors.message));
  DecodedCrop out;
  out.image.width = decoded.width, out.image.height = decoded.height;
  if (decoded.cmyk) {  // as Adobe applications store it (inverted): R = C·K/255, and so on
    out.image.pixels.resize(static_cast<size_t>(decoded.width) * decoded.height * 3);
    for (size_t p = 0; p < out.image.pixels.size() / 3; ++p) {
      int c = pixels[4 * p], m = pixels[4 * p + 1], y = pixels[4 * p + 2], k = pixels[4 * p + 3];
      if (!decoded.adobe) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
      out.image.pixels[3 * p] = static_cast<uint8_t>(c * k / 255);
      out.image.pixels[3 * p + 1] = static_cast<uint8_t>(m * k / 255);
      out.image.pixels[3 * p + 2] = static_cast<uint8_t>(y * k / 255);
    }
  } else {
    out.image.pixels = std::move(pixels);
  }
  out.box = scaled(box, static_cast<double>(decoded.width) / full.width,
                   static_cast<double>(decoded.height) / full.height);
  return out;
}

bool is_jpeg(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff;
}

}  // namespace

DecodedCrop decode_image(const std::string& path, int64_t max_pixels, int min_side,
                         const std::function<CropBox(int, int)>& box_of) {
  const std::vector<uint8_t> bytes = read_file(path);
  DecodedCrop out;
  if (is_jpeg(bytes)) return decode_jpeg(bytes, path, max_pixels, min_side, box_of);
  const auto size = static_cast<int>(std::min<size_t>(bytes.size(), INT32_MAX));
  int w = 0, h = 0, c = 0;
  if (!stbi_info_from_memory(bytes.data(), size, &w, &h, &c))
    throw input_error(fmt::format("{}: cannot decode image ({})", path, stbi_failure_reason()));
  check_header(path, w, h, max_pixels);
  out.box = box_of(w, h);
  unsigned char* pixels = stbi_load_from_memory(bytes.data(), size, &w, &h, &c, 3);
  if (!pixels) throw input_error(fmt::format("{}: cannot decode image ({})", path, stbi_failure_reason()));
  out.image.width = w, out.image.height = h;
  out.image.pixels.assign(pixels, pixels + static_cast<size_t>(w) * h * 3);
  stbi_image_free(pixels);
  return out;
}

void resize_box(const Rgb& image, const CropBox& box, int size, uint8_t* chw) {
  std::vector<uint8_t> hwc(static_cast<size_t>(size) * size * 3);
  const double s0 = box.left / image.width, t0 = box.top / image.height;
  const double s1 = (box.left + box.width) / image.width, t1 = (box.top + box.height) / image.height;
  stbir_resize_region(image.pixels.data(), image.width, image.height, 0, hwc.data(), size, size, 0,
                      STBIR_TYPE_UINT8, 3, STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_EDGE_CLAMP,
                      STBIR_FILTER_TRIANGLE, STBIR_FILTER_TRIANGLE, STBIR_COLORSPACE_LINEAR, nullptr, s0, t0, s1, t1);
  const size_t plane = static_cast<size_t>(size) * size;
  for (size_t p = 0; p < plane; ++p)
    for (int ch = 0; ch < 3; ++ch) chw[ch * plane + p] = hwc[3 * p + ch];
}

}  // namespace ttq
