// Training checkpoints: every tensor of a Trainer's state, the optimizer, the RNG and the
// position, written atomically as DIR/checkpoint-<step>.pt (LibTorch's serialize archive).
#pragma once
#include <optional>
#include <string>

#include "core/train.h"

namespace ttq {

// Writes a checkpoint of `trainer` at `position`; keeps the newest two in `dir`.
void save_checkpoint(Trainer& trainer, const TrainPosition& position, const std::string& dir);

// The newest checkpoint in `dir`, if any.
std::optional<std::string> newest_checkpoint(const std::string& dir);

// Restores `trainer` from a checkpoint; an input error when it belongs to another model.
void load_checkpoint(Trainer& trainer, const std::string& path);

}  // namespace ttq
