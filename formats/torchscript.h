// Reading and writing TorchScript files, with the TTQ metadata riding along as an extra file.
#pragma once
#include <torch/script.h>

#include <map>
#include <optional>
#include <string>

#include "core/error.h"
#include "formats/metadata.h"

namespace ttq {

// The one input error for a TorchScript program that LibTorch refuses to load (`what` says what was
// loaded: "cannot load this TorchScript model"). A program calling an operator that this LibTorch
// lacks was saved by a newer PyTorch: the message names the operator, this LibTorch and what to do.
Error load_failure(const std::string& path, const std::string& what, const std::exception& e);

// Loads on CPU. Every failure is one input error line: a missing file, a file that is not a zip
// archive, a torch.save() pickle instead of a TorchScript program, a program LibTorch rejects.
LoadedModel load_torchscript(const std::string& path);

// Only the TTQ metadata, without loading the program (fast on any model size); the same errors
// for files that are not TorchScript; nullopt when the model holds no TTQ metadata.
std::optional<ModelMetadata> read_torchscript_metadata(const std::string& path);

// Saves atomically (temporary name, then rename); with metadata, it is stored as "ttq.json", and
// `float_program` and the `unread` tensors (packed models) as kProgramFile and kUnreadFile.
void save_torchscript(const torch::jit::Module& module, const std::optional<ModelMetadata>& metadata,
                      const std::string& path, const std::string& float_program = "",
                      const std::map<std::string, torch::Tensor>& unread = {});

// The TorchScript program with every parameter and buffer emptied: a few KiB that, with the
// tensors filled in again, is the module.
std::string program_without_tensors(torch::jit::Module module);

// The float32 ternary model of a packed one (export --format packed), bit-exact: its original
// program with every tensor taken from the packed model (or its kUnreadFile), the packed layers
// unpacked.
LoadedModel restore_packed(const LoadedModel& packed, const std::string& path);

}  // namespace ttq
