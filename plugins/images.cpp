#include "plugins/images.h"

#include <fmt/format.h>
#include <stb_image.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
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

Resample crop_then_resize(const CropBox& box, int size) {
  const auto axis = [size](double start, double length) {
    return AxisResample{start, start + length, start, start + length, size, 0};
  };
  return {axis(box.left, box.width), axis(box.top, box.height), size};
}

Resample resize_then_center_crop(int width, int height, int resize, int size) {
  // Resize(int): the shorter side becomes `resize`, the longer int(resize · long / short).
  const bool wide = width >= height;
  const int short_side = wide ? height : width, long_side = wide ? width : height;
  const int resized_long = static_cast<int>(static_cast<int64_t>(resize) * long_side / short_side);
  const int rw = wide ? resized_long : resize, rh = wide ? resize : resized_long;
  // CenterCrop: int(round((resized - size) / 2.0)) on each axis.
  const auto axis = [size](int source, int resized) {
    return AxisResample{0, static_cast<double>(source), 0, static_cast<double>(source), resized,
                        static_cast<int>(std::nearbyint((resized - size) / 2.0))};
  };
  return {axis(width, rw), axis(height, rh), size};
}

namespace {

constexpr double kMaxAspectRatio = 100;

// PIL's 8-bit resampling (libImaging/Resample.c): weights in fixed point with 22 fraction bits.
constexpr int kPrecisionBits = 32 - 8 - 2;

// One axis's filter taps: output o reads `count[o]` source pixels from `first[o]`, weighted by
// weights[o · width ...].
struct Taps {
  int width = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

// PIL's precompute_coeffs and normalize_coeffs_8bpc for the bilinear filter, for outputs
// [a.first, a.first + size) of the resize of [a.box0, a.box1) to a.total pixels, reading source
// pixels [lo, hi) only (lo, hi: a's bounds within the image). Computed in the coordinates of that
// range, as PIL does on the cropped image, so that the weights are PIL's to the bit.
Taps bilinear_taps(const AxisResample& a, int size, int image_size) {
  const int lo = std::max(0, static_cast<int>(std::floor(a.lo)));
  const int hi = std::min(image_size, static_cast<int>(std::ceil(a.hi)));
  const double in0 = a.box0 - lo, in1 = a.box1 - lo;
  const double scale = (in1 - in0) / a.total;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;  // the bilinear filter's support is 1
  const double ss = 1.0 / filter_scale;  // PIL multiplies by this rather than dividing
  Taps t;
  t.width = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(size), t.count.resize(size), t.weights.assign(static_cast<size_t>(size) * t.width, 0);
  std::vector<double> k(t.width);
  for (int o = 0; o < size; ++o) {
    const double center = in0 + (a.first + o + 0.5) * scale;
    const int xmin = std::max(0, static_cast<int>(center - support + 0.5));
    const int xmax = std::min(hi - lo, static_cast<int>(center + support + 0.5));
    const int n = std::max(0, xmax - xmin);
    double total = 0;
    for (int x = 0; x < n; ++x) {
      const double d = std::abs((x + xmin - center + 0.5) * ss);
      k[x] = d < 1.0 ? 1.0 - d : 0.0;
      total += k[x];
    }
    for (int x = 0; x < n; ++x) {
      const double w = (total != 0.0 ? k[x] / total : k[x]) * (1 << kPrecisionBits);
      t.weights[static_cast<size_t>(o) * t.width + x] = static_cast<int32_t>(w < 0 ? w - 0.5 : w + 0.5);
    }
    t.first[o] = lo + xmin, t.count[o] = n;
  }
  return t;
}

void check_header(const std::string& path, int w, int h, int64_t max_pixels) {
  const int64_t pixels = int64_t{w} * h;
  if (pixels > max_pixels)
    throw input_error(fmt::format("{}: {}x{} image ({} pixels) is over the limit of {} (raise it with "
                                  "--max-image-pixels)", path, w, h, pixels, max_pixels));
  if (std::max(w, h) > kMaxAspectRatio * std::min(w, h))
    throw input_error(fmt::format("{}: {}x{} image has an aspect ratio over {:.0f}:1", path, w, h, kMaxAspectRatio));
}

// The largest d in {1, 2, 4, 8} that leaves the part of the image the output shows at least
// min_side pixels on each side.
int downscale_for(const Resample& plan, int min_side) {
  const double visible = std::min((plan.x.box1 - plan.x.box0) * plan.size / plan.x.total,
                                  (plan.y.box1 - plan.y.box0) * plan.size / plan.y.total);
  int d = 1;
  while (d < 8 && visible / (2 * d) >= min_side) d *= 2;
  return d;
}

AxisResample scaled(const AxisResample& a, double s) {
  return {a.lo * s, a.hi * s, a.box0 * s, a.box1 * s, a.total, a.first};
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

struct JpegImage {
  int width = 0, height = 0, channels = 0;
  bool cmyk = false, adobe = false;
};

// The libjpeg calls, between a setjmp and the last libjpeg call no C++ object with a destructor is
// created (longjmp would skip it). With denom 0 only the header: size and colour space. Decodes
// the first `max_rows` rows (of the image scaled by 1/denom) and stops: the rest of the entropy-coded
// data, most of the cost, is skipped; the file must still hold its end marker, so that a truncated
// file is refused whichever rows a crop needs (FF D9 cannot occur inside entropy-coded data).
bool run_jpeg(const std::vector<uint8_t>& bytes, unsigned denom, int max_rows, JpegImage& info,
              std::vector<uint8_t>& pixels, JpegErrors& errors) {
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
  info.width = static_cast<int>(cinfo.output_width);
  info.height = std::min(static_cast<int>(cinfo.output_height), max_rows);
  info.channels = cinfo.output_components;
  pixels.resize(static_cast<size_t>(info.width) * info.height * info.channels);
  while (static_cast<int>(cinfo.output_scanline) < info.height) {
    JSAMPROW row = pixels.data() + static_cast<size_t>(cinfo.output_scanline) * info.width * info.channels;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  info.adobe = cinfo.saw_Adobe_marker;
  if (cinfo.output_scanline < cinfo.output_height) {
    static const uint8_t kEnd[2] = {0xff, 0xd9};
    const auto* rest = cinfo.src->next_input_byte;
    // (The entropy decoder, reading ahead, may have met the marker already.)
    if (cinfo.unread_marker != JPEG_EOI && !memmem(rest, cinfo.src->bytes_in_buffer, kEnd, 2)) errors.truncated = true;
    jpeg_abort_decompress(&cinfo);
  } else {
    jpeg_finish_decompress(&cinfo);
  }
  jpeg_destroy_decompress(&cinfo);
  if (errors.truncated) std::snprintf(errors.message, sizeof errors.message, "truncated JPEG data");
  return !errors.truncated;
}

// PIL's CMYK to RGB (Convert.c): R = (255 - K) - C·(255 - K)/255, rounded as its MULDIV255.
uint8_t cmyk_channel(int c, int k) {
  const int nk = 255 - k, t = c * nk + 128;
  return static_cast<uint8_t>(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
}

void decode_jpeg(const std::vector<uint8_t>& bytes, const std::string& path, int64_t max_pixels, int min_side,
                 const std::function<Resample(int, int)>& plan_of, Decoded& out) {
  JpegErrors errors{};
  JpegImage full, decoded;
  thread_local std::vector<uint8_t> cmyk;  // reused: a fresh buffer per image costs page faults
  if (!run_jpeg(bytes, 0, 0, full, cmyk, errors))
    throw input_error(fmt::format("{}: cannot decode image ({})", path, errors.message));
  check_header(path, full.width, full.height, max_pixels);
  const Resample plan = plan_of(full.width, full.height);
  const int d = min_side > 0 ? downscale_for(plan, min_side) : 1;
  // Decoded pixel i covers source pixels [d·i, d·(i + 1)): the scale is 1/d exactly (the size
  // is rounded up).
  out.plan = {scaled(plan.x, 1.0 / d), scaled(plan.y, 1.0 / d), plan.size};
  int max_rows = full.height;  // min_side 0: the whole image, to keep
  if (min_side > 0) {
    const Taps rows = bilinear_taps(out.plan.y, plan.size, (full.height + d - 1) / d);
    max_rows = rows.first.back() + rows.count.back();
  }
  std::vector<uint8_t>& pixels = full.cmyk ? cmyk : out.image.pixels;
  if (!run_jpeg(bytes, static_cast<unsigned>(d), max_rows, decoded, pixels, errors))
    throw input_error(fmt::format("{}: cannot decode image ({})", path, errors.message));
  out.image.width = decoded.width, out.image.height = decoded.height;
  if (decoded.cmyk) {
    // Adobe's files store CMYK inverted, as PIL's "CMYK;I" reads them.
    const int flip = decoded.adobe ? 255 : 0;
    out.image.pixels.resize(static_cast<size_t>(decoded.width) * decoded.height * 3);
    for (size_t p = 0; p < out.image.pixels.size() / 3; ++p) {
      const int k = std::abs(flip - pixels[4 * p + 3]);
      for (int ch = 0; ch < 3; ++ch) out.image.pixels[3 * p + ch] = cmyk_channel(std::abs(flip - pixels[4 * p + ch]), k);
    }
  }
}

bool is_jpeg(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff;
}

}  // namespace

void decode_image(const std::string& path, int64_t max_pixels, int min_side,
                  const std::function<Resample(int, int)>& plan_of, Decoded& out) {
  const std::vector<uint8_t> bytes = read_file(path);
  if (is_jpeg(bytes)) return decode_jpeg(bytes, path, max_pixels, min_side, plan_of, out);
  const auto size = static_cast<int>(std::min<size_t>(bytes.size(), INT32_MAX));
  int w = 0, h = 0, c = 0;
  if (!stbi_info_from_memory(bytes.data(), size, &w, &h, &c))
    throw input_error(fmt::format("{}: cannot decode image ({})", path, stbi_failure_reason()));
  check_header(path, w, h, max_pixels);
  out.plan = plan_of(w, h);
  unsigned char* pixels = stbi_load_from_memory(bytes.data(), size, &w, &h, &c, 3);
  if (!pixels) throw input_error(fmt::format("{}: cannot decode image ({})", path, stbi_failure_reason()));
  out.image.width = w, out.image.height = h;
  out.image.pixels.assign(pixels, pixels + static_cast<size_t>(w) * h * 3);
  stbi_image_free(pixels);
}

namespace {

uint8_t clip8(int32_t sum) { return static_cast<uint8_t>(std::clamp(sum >> kPrecisionBits, 0, 255)); }

// One output row of the vertical pass: the weighted sum of `taps` rows of n bytes, the same weight
// across each row, which the compiler vectorizes (built for AVX2 and for the baseline, chosen at
// run time).
__attribute__((target_clones("avx2", "default"))) void vertical_row(const uint8_t* rows, size_t n, const int32_t* w,
                                                                    int taps, int32_t* sum, uint8_t* out) {
  for (size_t j = 0; j < n; ++j) sum[j] = 1 << (kPrecisionBits - 1);
  for (int y = 0; y < taps; ++y) {
    const uint8_t* row = rows + static_cast<size_t>(y) * n;
    for (size_t j = 0; j < n; ++j) sum[j] += row[j] * w[y];
  }
  for (size_t j = 0; j < n; ++j) out[j] = clip8(sum[j]);
}

}  // namespace

void resample(const Rgb& image, const Resample& plan, uint8_t* chw) {
  const int size = plan.size;
  const Taps tx = bilinear_taps(plan.x, size, image.width), ty = bilinear_taps(plan.y, size, image.height);
  // Horizontal pass over the rows the vertical one reads, into one plane per channel, then the
  // vertical pass per plane straight into the output: PIL's order of passes.
  const int row0 = ty.first.front(), rows = std::max(0, ty.first.back() + ty.count.back() - row0);
  const size_t temp_plane = static_cast<size_t>(rows) * size;
  thread_local std::vector<uint8_t> temp;
  thread_local std::vector<int32_t> sums;
  temp.resize(3 * temp_plane), sums.resize(size);
  for (int r = 0; r < rows; ++r) {
    const uint8_t* in = image.pixels.data() + static_cast<size_t>(row0 + r) * image.width * 3;
    uint8_t* out = temp.data() + static_cast<size_t>(r) * size;
    for (int o = 0; o < size; ++o) {
      const int32_t* w = tx.weights.data() + static_cast<size_t>(o) * tx.width;
      const uint8_t* p = in + static_cast<size_t>(tx.first[o]) * 3;
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < tx.count[o]; ++x, p += 3) s0 += p[0] * w[x], s1 += p[1] * w[x], s2 += p[2] * w[x];
      out[o] = clip8(s0), out[temp_plane + o] = clip8(s1), out[2 * temp_plane + o] = clip8(s2);
    }
  }
  const size_t plane = static_cast<size_t>(size) * size;
  for (int ch = 0; ch < 3; ++ch)
    for (int o = 0; o < size; ++o)
      vertical_row(temp.data() + ch * temp_plane + static_cast<size_t>(ty.first[o] - row0) * size, size,
                   ty.weights.data() + static_cast<size_t>(o) * ty.width, ty.count[o], sums.data(),
                   chw + ch * plane + static_cast<size_t>(o) * size);
}

}  // namespace ttq
