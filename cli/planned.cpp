// Subcommands that later issues build. They are listed in `ttq --help` so that users and scripts
// see the whole tool, and they fail plainly instead of pretending to work.
#include "cli/commands.h"
#include "core/error.h"

namespace ttq::cli {

std::vector<Command> register_planned(CLI::App& app) {
  struct Planned {
    const char* name;
    const char* description;
  };
  static constexpr Planned kPlanned[] = {
      {"stats", "Wp/Wn and sparsity trajectories of a run (not implemented yet)"},
  };
  std::vector<Command> commands;
  for (const auto& p : kPlanned) {
    auto* sub = app.add_subcommand(p.name, p.description);
    sub->allow_extras()->fallthrough(false);  // any arguments: the command refuses to run anyway
    const std::string name = p.name;
    commands.push_back({sub, [name] {
                          throw runtime_error(fmt::format("'ttq {}' is not implemented yet", name));
                        }});
  }
  return commands;
}

}  // namespace ttq::cli
