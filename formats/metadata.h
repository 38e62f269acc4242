// The TTQ metadata: what ttq writes beside a model's tensors (the extra file "ttq.json" inside
// TorchScript files, section 0 of a .ttqz archive) so that ttq and PyTorch users can read the
// scales, Δ, code counts and options of each ternary layer, and for finetune the run's summary.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/quantize.h"
#include "core/sensitivity.h"
#include "core/train.h"
#include "core/util.h"

namespace ttq {

// The extra-file name inside the TorchScript zip (PyTorch: torch.jit.load(f, _extra_files=...)).
inline constexpr const char* kMetadataFile = "ttq.json";
// Packed models also carry their original TorchScript program, without tensors: restoring the
// float32 model loads it and fills in the tensors (unpacking the packed ones), bit-exact.
inline constexpr const char* kProgramFile = "ttq.program";
// And the tensors their program never reads (packed_model.h's set_aside_unread: folded BatchNorms),
// which only restoring needs: a torch.save() tuple of (name, tensor) pairs, that loading the model
// leaves on disk.
inline constexpr const char* kUnreadFile = "ttq.unread";

// What a finetune run was asked to do: the trainer's options and the run's own settings. Written
// to the run log's first record and, within RunSummary, to the model's metadata.
struct RunOptions {
  TrainOptions train;
  int threads = 0;       // 0: one per core
  int64_t subset = 0;    // 0: every sample
  int world_size = 1;
};

// How a finetune run ended: its data, options and final validation metrics.
struct RunSummary {
  std::string data;  // the dataset spec
  RunOptions options;
  int64_t steps = 0;  // the training steps behind the state the model holds (Trainer::kept_step)
  Metrics val;  // top1, top5, loss
  std::string recipe;  // what --optimizer auto and --lr auto decided, and why (Trainer::recipe())
  int kept_epoch = -1;  // --keep best: the epoch whose end the model is (0: the start); -1: the last state
  int recoveries = 0;   // times the run went back to its best state after diverging (--on-divergence)
};

struct ModelMetadata {
  static constexpr int kVersion = 1;  // bump when fields change meaning
  std::string tool_version = TTQ_VERSION;
  std::string libtorch_version = ttq::libtorch_version();  // the LibTorch that wrote the file
  std::string command;  // the ttq command that wrote the file
  QuantizeOptions options;
  std::vector<LayerRecord> layers;
  std::optional<RunSummary> run;  // finetune only
  std::optional<BudgetChoice> budget;  // quantize --max-drop/--target-ratio: what was chosen and why
  std::vector<std::string> packed;  // packed models (export --format packed): the layers that run packed
  std::string activations;          // packed models: "float" or "int8" (export --activations)
  // Packed int8 models with static steps (export --calibrate): the samples they were calibrated on.
  struct Calibration {
    std::string data;  // the data spec
    int64_t samples = 0;
  };
  std::optional<Calibration> calibration;

  const LayerRecord* find(const std::string& name) const { return find_layer(layers, name); }
};

// A module read from a file, with the metadata when ttq wrote the file.
struct LoadedModel {
  torch::jit::Module module;
  std::optional<ModelMetadata> metadata;
  std::string float_program;  // packed models: the original program, without tensors (kProgramFile)
  bool packed() const { return metadata && !metadata->packed.empty(); }
};

std::string metadata_to_json(const ModelMetadata& meta);
// Throws an input error naming `source` when the text is not valid TTQ metadata.
ModelMetadata metadata_from_json(const std::string& text, const std::string& source);

}  // namespace ttq
