// One function per subcommand (one file each) registers it on the top-level app.
#pragma once
#include <vector>

#include "cli/common.h"

namespace ttq::cli {

Command register_quantize(CLI::App& app);
Command register_inspect(CLI::App& app);
Command register_export(CLI::App& app);
Command register_finetune(CLI::App& app);
Command register_eval(CLI::App& app);
// Subcommands whose issues are still open: registered so that scripts find them, but they
// refuse to run.
std::vector<Command> register_planned(CLI::App& app);

}  // namespace ttq::cli
