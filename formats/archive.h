// .ttqz archives to and from TorchScript modules (the format itself: formats/ttqz.h, man/ttqz.5).
#pragma once
#include <torch/script.h>

#include <optional>
#include <string>

#include "formats/metadata.h"
#include "formats/ttqz.h"

namespace ttq {

enum class FpDtype { Float32, Float16, BFloat16 };  // storage of float32 full-precision tensors
inline constexpr Choice<FpDtype> kFpDtypes[] = {
    {"fp32", FpDtype::Float32, "exact"}, {"fp16", FpDtype::Float16, "IEEE half"}, {"bf16", FpDtype::BFloat16, "bfloat16"}};
constexpr const auto& choices(FpDtype) { return kFpDtypes; }

struct ExportOptions {
  int level = 3;  // zstd level for the program and full-precision tensors
  FpDtype fp_dtype = FpDtype::Float32;
};

// Writes `module` as a .ttqz archive, atomically. The layers named in `metadata` must hold only
// {-Wn, 0, +Wp}: they are stored as entropy-coded ternary codes; every other parameter and buffer
// is stored exactly (or narrowed per `fp_dtype`); the TorchScript program travels without them.
void write_archive(const torch::jit::Module& module, const ModelMetadata& metadata,
                   const ExportOptions& options, const std::string& path);

// Restores the module: ternary weights bit-exact, full-precision tensors exact (when stored as
// float32). Input errors (one line) for anything malformed.
LoadedModel read_archive(const std::string& path);

// The C++ API for applications: a runnable module from a .ttqz file.
torch::jit::Module load_archive(const std::string& path);

// ttqz::parse with the file's name in front of any error. `bytes` must outlive the result.
ttqz::Archive parse_archive(const std::vector<uint8_t>& bytes, const std::string& path);

}  // namespace ttq
