#include "core/ops/packed.h"

#include <c10/util/Exception.h>

#include <limits>

#include "core/ops/kernels.h"

namespace ttq::ops {
namespace {

// K: the weights of a row (the product of the dimensions after the first).
int64_t row_length(const std::vector<int64_t>& shape) {
  int64_t k = 1;
  for (size_t i = 1; i < shape.size(); ++i) k *= shape[i];
  return k;
}

}  // namespace

int64_t packed_bytes(const std::vector<int64_t>& shape) {
  TORCH_CHECK(!shape.empty(), "ttq: a packed weight needs a shape");
  return shape[0] * packed_groups(row_length(shape)) * 8;
}

Packed pack(const torch::Tensor& weight, float wp, float wn) {
  TORCH_CHECK(weight.dim() >= 1 && weight.is_floating_point(), "ttq: pack needs a floating weight");
  const auto w = weight.detach().to(torch::kFloat).contiguous().cpu();
  const int64_t rows = w.size(0), k = rows ? w.numel() / rows : 0, groups = packed_groups(k);
  auto codes = torch::zeros({rows, groups * 8}, torch::kUInt8);
  const float* src = w.data_ptr<float>();
  auto* planes = reinterpret_cast<uint32_t*>(codes.data_ptr<uint8_t>());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const float v = src[r * k + i];
      uint32_t* group = planes + (r * groups + i / kGroup) * 2;
      const uint32_t bit = 1u << (i % kGroup);
      if (v == wp && wp != 0)
        group[0] |= bit;
      else if (v == -wn && wn != 0)
        group[1] |= bit;
      else
        TORCH_CHECK(v == 0, "ttq: weight value ", v, " at [", r, ", ", i, "] is not +", wp, ", 0 or -", wn,
                    ": not a ternary weight of these scales");
    }
  return {codes, torch::tensor({wp, wn}, torch::kFloat)};
}

void check_packed(const torch::Tensor& codes, const torch::Tensor& scales, const std::vector<int64_t>& shape) {
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && codes.is_contiguous() && codes.device().is_cpu(),
              "ttq: packed codes must be a contiguous uint8 CPU tensor");
  TORCH_CHECK(codes.numel() == packed_bytes(shape), "ttq: packed codes hold ", codes.numel(),
              " bytes; a weight of this shape needs ", packed_bytes(shape));
  TORCH_CHECK(scales.scalar_type() == torch::kFloat && scales.numel() == 2 && scales.device().is_cpu(),
              "ttq: the scales must be a float32 CPU tensor [Wp, Wn]");
}

void check_packed_bits(const torch::Tensor& codes, const std::vector<int64_t>& shape) {
  const int64_t k = row_length(shape);
  const int64_t groups = packed_groups(k), tail = k % kGroup;
  const uint32_t padding = tail ? ~((1u << tail) - 1) : 0u;
  const auto* planes = reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>());
  for (int64_t r = 0; r < shape[0]; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const uint32_t* group = planes + (r * groups + g) * 2;
      TORCH_CHECK((group[0] & group[1]) == 0, "ttq: packed codes of row ", r, " mark a weight both positive and negative");
      TORCH_CHECK(g + 1 < groups || ((group[0] | group[1]) & padding) == 0, "ttq: packed codes of row ", r,
                  " set bits past the weight's end");
    }
}

void decode_rows(const torch::Tensor& codes, int64_t k, float wp, float wn, int64_t r0, int64_t r1, float* dst) {
  ternary_decode(selected_path(), reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>()), packed_groups(k), k,
                 wp, wn, r0, r1, dst);
}

torch::Tensor unpack(const torch::Tensor& codes, const torch::Tensor& scales, const std::vector<int64_t>& shape) {
  check_packed(codes, scales, shape);
  check_packed_bits(codes, shape);
  const int64_t rows = shape[0], k = row_length(shape);
  auto out = torch::empty({rows, k}, torch::kFloat);
  decode_rows(codes, k, scales[0].item<float>(), scales[1].item<float>(), 0, rows, out.data_ptr<float>());
  return out.view(shape);
}

std::pair<torch::Tensor, torch::Tensor> eight_bit_rows(const torch::Tensor& weight, int64_t align) {
  const auto w = weight.reshape({weight.size(0), -1}).to(torch::kFloat);
  const int64_t rows = w.size(0), k = w.size(1), stride = (k + align - 1) / align * align;
  const auto step = (w.abs().amax(1) / 127).clamp_min(std::numeric_limits<float>::min()).contiguous();
  auto padded = torch::zeros({rows, stride}, torch::kChar);
  padded.narrow(1, 0, k).copy_(torch::round(w / step.unsqueeze(1)).clamp(-127, 127));
  return {padded.narrow(1, 0, k), step};
}

}  // namespace ttq::ops
