// The run log (--log RUN.jsonl): one JSON object a line. The first line of a run describes it
// ({"type": "run", ...}); then {"type": "step"} records every --log-every steps and one
// {"type": "epoch"} record per epoch. `ttq stats` and CI scripts read it.
#pragma once
#include <fstream>
#include <string>

#include "core/train.h"

namespace ttq {

inline constexpr int kRunLogVersion = 1;

class RunLog {
 public:
  // Appends when resuming, else starts a new file.
  RunLog(const std::string& path, bool append);
  void run(const std::string& model, const std::string& data, const std::string& options_json);
  void step(const StepProgress& p, const std::vector<LayerSnapshot>& layers);
  void epoch(const EpochRecord& r);

 private:
  void write(const std::string& line);
  std::string path_;
  std::ofstream out_;
};

}  // namespace ttq
