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
Command register_stats(CLI::App& app);
Command register_bench(CLI::App& app);
Command register_sensitivity(CLI::App& app);

// A bash completion script for every command and option registered on `app`.
std::string bash_completion(const CLI::App& app);

}  // namespace ttq::cli
