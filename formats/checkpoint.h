// Training checkpoints: every tensor of a Trainer's state, the optimizer, the RNG, the position and
// the options that define the run, written atomically as DIR/checkpoint-<step>.pt: LibTorch's
// serialize archive followed by a 24-byte trailer ("TTQCKPT2", the archive's size and its XXH64),
// so that a flipped bit or a cut file is noticed before anything is restored.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "core/train.h"
#include "formats/metadata.h"

namespace ttq {

// What a resumed run must share with the checkpoint's run: every option that changes the result
// (the data, the model's layer selection, the optimizer and schedule, the global batch, the seed,
// the threshold, ...). May change: --threads, --epochs (to extend a run), --max-steps, the log
// and progress flags, and the world size at the same global batch.
nlohmann::json resume_identity(const RunOptions& options, const std::string& data);

// Writes a checkpoint of `trainer` at `position`; keeps the newest two in `dir`.
void save_checkpoint(Trainer& trainer, const TrainPosition& position, const std::string& dir,
                     const nlohmann::json& identity);

// The newest checkpoint in `dir`, if any.
std::optional<std::string> newest_checkpoint(const std::string& dir);

// Restores `trainer` from one checkpoint. Input errors, before anything is changed: a corrupt or
// truncated file, another model or layer selection; a usage error naming the first option whose
// value differs from `identity`.
void load_checkpoint(Trainer& trainer, const std::string& path, const nlohmann::json& identity);

// Restores from the newest usable checkpoint in `dir`: a corrupt newest one is skipped with a
// warning naming it and the one used instead. Returns the path used; an input error when there is
// none, or none is usable.
std::string resume_from_checkpoints(Trainer& trainer, const std::string& dir, const nlohmann::json& identity);

}  // namespace ttq
