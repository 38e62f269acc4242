// The TTQ metadata as JSON: the extra file "ttq.json" inside TorchScript archives that ttq writes.
#pragma once
#include <string>

#include "core/quantize.h"

namespace ttq {

// The extra-file name inside the TorchScript zip (PyTorch: torch.jit.load(f, _extra_files=...)).
inline constexpr const char* kMetadataFile = "ttq.json";

std::string metadata_to_json(const ModelMetadata& meta);
// Throws an input error naming `source` when the text is not valid TTQ metadata.
ModelMetadata metadata_from_json(const std::string& text, const std::string& source);

}  // namespace ttq
