// Reading and writing TorchScript files, with the TTQ metadata riding along as an extra file.
#pragma once
#include <torch/script.h>

#include <optional>
#include <string>

#include "formats/metadata.h"

namespace ttq {

// Loads on CPU. Every failure is one input error line: a missing file, a file that is not a zip
// archive, a torch.save() pickle instead of a TorchScript program, a program LibTorch rejects.
LoadedModel load_torchscript(const std::string& path);

// Only the TTQ metadata, without loading the program (fast on any model size); the same errors
// for files that are not TorchScript; nullopt when the model holds no TTQ metadata.
std::optional<ModelMetadata> read_torchscript_metadata(const std::string& path);

// Saves atomically (temporary name, then rename); with metadata, it is stored as "ttq.json".
void save_torchscript(const torch::jit::Module& module, const std::optional<ModelMetadata>& metadata,
                      const std::string& path);

}  // namespace ttq
