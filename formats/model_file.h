// The one entry point for model files (as bloaty's TryOpen*File): every kind ttq reads, told
// apart by its first bytes in exactly one place.
#pragma once
#include <optional>
#include <string>

#include "core/packed_model.h"
#include "formats/metadata.h"

namespace ttq {

enum class ModelFileKind {
  TorchScript,  // a zip archive: TorchScript with or without TTQ metadata (quantize, finetune, PyTorch)
  Archive,      // .ttqz (man/ttqz.5)
};

// The kind from the file's magic bytes; nullopt when it is neither (or cannot be read).
std::optional<ModelFileKind> sniff_model_file(const std::string& path);

struct OpenedModel : LoadedModel {
  ModelFileKind kind = ModelFileKind::TorchScript;
};

// How a packed model (export --format packed) is wanted: as the float32 ternary model it was
// packed from (inspect, export, stats, finetune), or as stored, running the ttq:: operators (eval).
enum class PackedAs { Float, Stored };

// Loads any model file ttq reads, on CPU. One input error line for anything else: a missing
// file, a torch.save() pickle, random bytes, a corrupt archive.
OpenedModel open_model(const std::string& path, PackedAs packed = PackedAs::Float);

// The C++ API for applications that run a model packed (man/ttq-export.1, "Packed models"): a packed
// TorchScript file (ttq export --format packed) as stored, or a .ttqz archive or ttq TorchScript
// model packed as it loads, its ternary linear and conv2d layers then running the ttq:: operators
// (link ttq::ttq, which brings ttq::ops). A packed file stored with other activations is packed again
// from its float32 form. The same errors as open_model, and one when no layer can run packed.
torch::jit::Module load_packed(const std::string& path, Activations activations = Activations::Float);

// Only the TTQ metadata, without loading the program (fast on any size); nullopt when the file
// has none; the same errors as open_model.
std::optional<ModelMetadata> read_model_metadata(const std::string& path);

}  // namespace ttq
