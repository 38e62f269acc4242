// ttq: parse the command line, run one subcommand, map every failure to one line on stderr and a
// documented exit code (man/ttq.1, EXIT STATUS). Nothing else in ttq exits the process.
#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/util.h"

namespace {

void setup_logging(int verbose, bool quiet) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>(
      ttq::cli::no_color() ? spdlog::color_mode::never : spdlog::color_mode::automatic);
  auto logger = std::make_shared<spdlog::logger>("ttq", sink);
  logger->set_pattern("ttq: %^%l%$: %v");
  logger->set_level(quiet ? spdlog::level::warn
                          : verbose > 0 ? spdlog::level::debug : spdlog::level::info);
  spdlog::set_default_logger(logger);
}

int fail(int code, const std::string& message) {
  std::cerr << "ttq: error: " << message << '\n';
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  ttq::keep_freed_memory_for_reuse();
  CLI::App app{"Trained Ternary Quantization (TTQ) for TorchScript models", "ttq"};
  app.set_version_flag("--version", [] { return TTQ_TOOL " (LibTorch " + ttq::libtorch_version() + ")"; });
  app.require_subcommand(1);
  app.fallthrough();  // -v/-q may follow the subcommand
  int verbose = 0;
  bool quiet = false;
  app.add_flag("-v,--verbose", verbose, "more detail on stderr (per-layer decisions)");
  app.add_flag("-q,--quiet", quiet, "only warnings and errors on stderr");
  app.footer("Run 'ttq COMMAND --help' for a command's options; 'man ttq' for exit codes.");
  bool completion = false;
  app.add_flag("--bash-completion", completion, "print a bash completion script: source <(ttq --bash-completion)")
      ->trigger_on_parse();

  std::vector<ttq::cli::Command> commands{ttq::cli::register_quantize(app),
                                          ttq::cli::register_finetune(app),
                                          ttq::cli::register_eval(app),
                                          ttq::cli::register_inspect(app),
                                          ttq::cli::register_export(app),
                                          ttq::cli::register_stats(app),
                                          ttq::cli::register_bench(app),
                                          ttq::cli::register_sensitivity(app)};

  try {
    app.parse(argc, argv);
  } catch (const CLI::RequiredError& e) {
    if (!completion) {
      std::string names;
      for (const auto& c : commands) names += (names.empty() ? "" : ", ") + c.app->get_name();
      std::string first;  // the first word that is not an option: the command the user meant
      for (int i = 1; i < argc && first.empty(); ++i)
        if (argv[i][0] != '-') first = argv[i];
      if (app.get_subcommands().empty())
        return fail(ttq::kExitUsage, (first.empty() ? std::string("no command given")
                                                                        : "unknown command '" + first + "'") +
                                         "; commands: " + names + " (see 'ttq --help')");
      return fail(ttq::kExitUsage, ttq::short_message(e.what()) + " (see 'ttq --help')");
    }
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(ttq::kExitUsage, ttq::short_message(e.what()) + " (see 'ttq --help')");
  }

  if (completion) {
    std::cout << ttq::cli::bash_completion(app);
    return ttq::kExitOk;
  }
  setup_logging(verbose, quiet);
  ttq::cli::install_signal_handlers();
  try {
    for (const auto& c : commands)
      if (c.app->parsed()) c.run();
    return ttq::kExitOk;
  } catch (const ttq::Error& e) {
    return fail(ttq::exit_code(e.kind()), e.what());
  } catch (const c10::Error& e) {
    return fail(ttq::kExitFailure, ttq::short_message(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return fail(ttq::kExitFailure, ttq::short_message(e.what()));
  }
}
