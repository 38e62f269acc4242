// The run log (--log RUN.jsonl): one JSON object a line. The first line of a run describes it
// ({"type": "run", ...}); an {"type": "init"} record holds the layers before the first step; then
// {"type": "step"} records every --log-every steps and one {"type": "epoch"} record per epoch; an
// {"type": "end"} record, the run's summary as the model's metadata holds it, when OUT is written.
// `ttq stats` (read_run_log below) and CI scripts read it. Readers skip record types they do not
// know, so new record types and fields do not change the version; a changed meaning does.
#pragma once
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "core/train.h"
#include "formats/atomic_file.h"
#include "formats/metadata.h"

namespace ttq {

inline constexpr int kRunLogVersion = 1;

class RunLog {
 public:
  // Appends when resuming (after cutting a torn last line, with a warning), else starts a new file.
  // Holds a lock on the file: a second run writing the same log fails here.
  RunLog(const std::string& path, bool append);
  // `recipe`: what the run's auto options decided and why (omitted when empty).
  void run(const std::string& model, const std::string& data, const RunOptions& options, int64_t steps_per_epoch,
           const std::string& recipe = "");
  void probe(const LrProbe& probe);  // --lr auto's range test: each step's rate and smoothed loss
  void init(const std::vector<LayerRecord>& layers);
  void step(const StepProgress& p, const std::vector<LayerRecord>& layers);
  void epoch(const EpochRecord& r);
  void end(const RunSummary& summary);  // OUT's metrics, its kept epoch and the recoveries

 private:
  void write(const std::string& line);
  std::string path_;
  FileLock lock_;
  std::ofstream out_;
};

// Where the layers stood at one global step (an init, step or epoch record).
struct LoggedPoint {
  int64_t step = 0;
  std::optional<double> lr, loss;  // step records: this step's; absent for init and epoch records
  std::vector<LayerRecord> layers;
};

struct RunHistory {
  std::string model, data, tool;
  RunOptions options;
  int epochs_planned = 0;       // 0: not recorded
  int64_t steps_per_epoch = 0;  // 0: not recorded and no complete epoch to derive it from
  std::vector<LoggedPoint> points;  // ascending steps
  std::vector<EpochRecord> epochs;  // ascending epochs; their layers are in `points`
  std::optional<RunSummary> end;    // absent while the run goes on (or when it was cut)
};

// Reads a whole run log. A resumed run appends to its log; records that a later record repeats
// (same or later step, same or later epoch) are replaced by the later ones. Throws an input error,
// one line naming the file and line, for an empty or malformed log or a newer version. A torn last
// line (a run killed while writing it) is skipped with a warning.
RunHistory read_run_log(const std::string& path);

}  // namespace ttq
