// ttq bench MODEL [--vs OTHER]: latency and memory of running a model, or two side by side
// (man/ttq-bench.1). Latency: medians over warm runs, the two models' runs alternated so that both
// see the same machine. Memory: measured for each model in a fresh ttq process (this binary with
// the hidden --memory-probe), so that one model's allocations cannot hide in the other's.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/objective.h"
#include "core/ops/kernels.h"
#include "core/util.h"
#include "formats/model_file.h"

extern char** environ;

namespace ttq::cli {
namespace {

struct BenchArgs {
  std::string model, vs;
  int64_t batch = 1;
  std::vector<int64_t> input_shape{3, 224, 224};
  DataFlags data;  // --data: its first samples are the input instead
  int runs = 20, warmup = 3;
  Precision precision = Precision::Fp32;
  MemoryFormat memory_format = MemoryFormat::Auto;
  bool json = false;
  bool memory_probe = false;  // internal: print this process's memory figures for MODEL as JSON
};

// A model as it is timed: --precision decided for it, and its convolution weights and its inputs in
// the memory order --memory-format takes for it.
struct BenchModel {
  torch::jit::Module module;
  Precision precision = Precision::Fp32;
  std::vector<torch::Tensor> inputs;
};

BenchModel prepare_model(const BenchArgs& a, const std::string& path, const std::vector<torch::Tensor>& inputs) {
  const OpenedModel opened = open_model(path, PackedAs::Stored);
  BenchModel m{opened.module, model_precision(a.precision, opened.packed(), path), inputs};
  m.module.eval();
  const bool channels_last = uses_channels_last(a.memory_format, m.module);
  set_memory_format(m.module, channels_last);
  if (channels_last)
    for (auto& t : m.inputs)
      t = in_channels_last(t);
  return m;
}

void run_prepared(BenchModel& m) {
  const AutocastScope autocast(m.precision);
  run_model(m.module, m.inputs);
}

// Resident and peak resident memory of this process, in KiB (/proc/self/status).
std::pair<int64_t, int64_t> rss_kib() {
  std::ifstream status("/proc/self/status");
  int64_t rss = 0, peak = 0;
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) rss = std::stoll(line.substr(6));
    if (line.rfind("VmHWM:", 0) == 0) peak = std::stoll(line.substr(6));
  }
  return {rss, peak};
}

// Lets VmHWM start again from the current resident size (Linux: "5" to clear_refs).
void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }

struct Memory {
  double loaded = 0, after = 0, peak = 0;  // MiB above LibTorch's baseline
};

// The model's inputs: the first --batch-size samples of --data's test split (its training split when
// it has no test split) as preprocessed for the model, or a random float32 tensor of --input-shape.
std::vector<torch::Tensor> bench_inputs(const BenchArgs& a) {
  if (a.data.data.empty()) {
    std::vector<int64_t> shape{a.batch};
    shape.insert(shape.end(), a.input_shape.begin(), a.input_shape.end());
    torch::manual_seed(0);
    return {torch::randn(shape)};
  }
  const DataSplits data = a.data.load();
  const Dataset& split = data.test.size() > 0 ? data.test : data.train;
  if (split.size() < a.batch)
    throw input_error(fmt::format("{} has {} sample(s); --batch-size asks for {}", a.data.spec(), split.size(), a.batch));
  std::vector<torch::Tensor> inputs;
  for (const auto& t : prepare_inputs(split, torch::arange(a.batch), a.data.preprocess(data)))
    inputs.push_back(t.clone());
  return inputs;
}

// The probe's inputs travel through its stdin, pickled, so that it runs on exactly the parent's.
std::vector<torch::Tensor> read_probe_inputs() {
  std::vector<char> bytes{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  std::vector<torch::Tensor> inputs;
  for (const auto& v : torch::jit::pickle_load(bytes).toList()) inputs.push_back(v.get().toTensor());
  return inputs;
}

// LibTorch's baseline: its start-up and its TorchScript runtime, which the first model loaded in a
// process initializes once whatever the model is (operator tables, builtins: about 4 MiB). Saving,
// loading and running a one-line module gets there, so that the figures are the model's own.
void warm_up_torchscript() {
  torch::jit::Module warm("__torch__.ttq.Warmup");
  warm.register_buffer("one", torch::ones({1}));
  warm.define("def forward(self, x):\n    return torch.relu(x + self.one)\n");
  std::stringstream file;
  warm.save(file);
  (void)torch::jit::load(file).forward({torch::ones({8, 8}).matmul(torch::ones({8, 8}))});
}

void run_memory_probe(const BenchArgs& a) {
  const auto inputs = read_probe_inputs();  // the bytes they came from are freed and handed back below
  torch::NoGradGuard no_grad;
  warm_up_torchscript();
  release_free_memory();
  const int64_t baseline = rss_kib().first;
  BenchModel m = prepare_model(a, a.model, inputs);
  const int64_t loaded = rss_kib().first;
  reset_peak();
  run_prepared(m);
  const auto [after, peak] = rss_kib();
  fmt::print("{}\n", nlohmann::json{{"baseline_kib", baseline}, {"loaded_kib", loaded},
                                    {"after_kib", after}, {"peak_kib", peak}}.dump());
}

void write_all(int fd, const std::vector<char>& bytes) {
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) return;  // the probe died: its exit status says so
    done += static_cast<size_t>(n);
  }
}

// The memory figures of `model` running on `inputs`, from a fresh ttq process.
Memory measure_memory(const BenchArgs& a, const std::string& model, const std::vector<torch::Tensor>& inputs) {
  std::vector<std::string> args{"ttq", "-q", "bench", model, "--memory-probe", "--threads",
                                std::to_string(at::get_num_threads()), "--precision", choice_name(a.precision),
                                "--memory-format", choice_name(a.memory_format)};
  std::vector<char*> argv;
  for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  int to_probe[2], from_probe[2];
  if (pipe(to_probe) != 0 || pipe(from_probe) != 0) throw runtime_error("bench: cannot create a pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to_probe[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, from_probe[1], STDOUT_FILENO);
  for (const int fd : {to_probe[0], to_probe[1], from_probe[0], from_probe[1]})
    posix_spawn_file_actions_addclose(&actions, fd);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(to_probe[0]);
  close(from_probe[1]);
  if (spawned == 0) write_all(to_probe[1], torch::jit::pickle_save(c10::List<torch::Tensor>(inputs)));
  close(to_probe[1]);
  std::string out;
  char buffer[4096];
  for (ssize_t n; (n = read(from_probe[0], buffer, sizeof buffer)) > 0;) out.append(buffer, static_cast<size_t>(n));
  close(from_probe[0]);
  int status = 0;
  if (spawned != 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw runtime_error(fmt::format("bench: measuring the memory of {} failed", model));
  const auto j = nlohmann::json::parse(out);
  const double base = j.at("baseline_kib").get<double>();
  const auto mib = [&](const char* key) { return (j.at(key).get<double>() - base) / 1024.0; };
  return {mib("loaded_kib"), mib("after_kib"), mib("peak_kib")};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// The kernels packed models run with: the fastest this CPU has, or TTQ_KERNEL's.
std::string kernel_path() {
  try {
    return ops::path_name(ops::selected_path());
  } catch (const c10::Error& e) {
    throw usage_error(ops_message(e.what_without_backtrace()));
  }
}

void run_bench(BenchArgs& a) {
  const std::string kernels = kernel_path();
  a.data.set_threads();
  if (a.memory_probe) return run_memory_probe(a);
  std::vector<std::string> paths{a.model};
  if (!a.vs.empty()) paths.push_back(a.vs);
  const auto inputs = bench_inputs(a);
  std::vector<BenchModel> models;
  for (const auto& p : paths) models.push_back(prepare_model(a, p, inputs));
  torch::NoGradGuard no_grad;
  using Clock = std::chrono::steady_clock;
  std::vector<std::vector<double>> ms(models.size());
  for (int run = -a.warmup; run < a.runs; ++run)
    for (size_t i = 0; i < models.size(); ++i) {  // alternated: both see the same machine
      const auto t0 = Clock::now();
      run_prepared(models[i]);
      if (run >= 0) ms[i].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
  std::vector<Memory> memory;
  for (const auto& p : paths) memory.push_back(measure_memory(a, p, inputs));

  nlohmann::json doc{{"batch", a.batch}, {"runs", a.runs}, {"threads", at::get_num_threads()}, {"kernels", kernels},
                     {"inputs", nlohmann::json::array()}, {"models", nlohmann::json::array()}};
  std::string shapes;
  for (const auto& t : inputs) {
    doc["inputs"].push_back(t.sizes().vec());
    shapes += (shapes.empty() ? "" : ", ") + bracketed_shape(t.sizes().vec());
  }
  const std::string& data = a.data.data;
  if (data.empty())
    doc["input_shape"] = a.input_shape;
  else
    doc["data"] = data;
  if (!a.json) {
    fmt::print("{} run(s) on {}{} after {} warm-up, {} thread(s), {} kernels; memory above LibTorch's baseline\n",
               a.runs, shapes, data.empty() ? " (random)" : " from " + data, a.warmup, at::get_num_threads(),
               kernels);
    fmt::print("{:<40}  {:>12}  {:>12}  {:>12}  {:>12}\n", "model", "median", "loaded", "after a run", "peak");
  }
  for (size_t i = 0; i < models.size(); ++i) {
    const double med = median(ms[i]);
    doc["models"].push_back({{"model", paths[i]}, {"precision", choice_name(models[i].precision)}, {"median_ms", med}, {"loaded_mib", memory[i].loaded},
                             {"after_run_mib", memory[i].after}, {"peak_mib", memory[i].peak}});
    if (!a.json)
      fmt::print("{:<40}  {:>9.3f} ms  {:>8.1f} MiB  {:>8.1f} MiB  {:>8.1f} MiB\n",
                 paths[i] + (models[i].precision == Precision::Bf16 ? " (bf16)" : ""), med, memory[i].loaded,
                 memory[i].after, memory[i].peak);
  }
  if (models.size() == 2) {
    // As MODEL compares with the --vs baseline: above 1, MODEL is faster / needs less memory.
    const double speed = median(ms[1]) / median(ms[0]);
    const double memory_ratio = memory[1].loaded / std::max(memory[0].loaded, 1e-3);
    doc["speedup"] = speed;
    doc["memory_ratio"] = memory_ratio;
    if (!a.json)
      fmt::print("{} against {}: {:.2f}x the speed, {:.2f}x less memory once loaded\n", paths[0], paths[1], speed,
                 memory_ratio);
  }
  if (a.json) fmt::print("{}\n", doc.dump(2));
}

}  // namespace

Command register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  auto* sub = app.add_subcommand("bench", "Latency and memory of a model, or of two side by side");
  sub->add_option("MODEL", a->model, "TorchScript model, packed model or .ttqz archive")->required()->type_name("FILE");
  sub->add_option("--vs", a->vs, "a second model to run alternately with the first (the ratio is measured in one run)")
      ->type_name("FILE");
  auto* batch = sub->add_option("--batch-size", a->batch, "samples per run")
                    ->capture_default_str()
                    ->check(CLI::PositiveNumber);
  sub->add_option("--batch", a->batch)->group("")->excludes(batch)->check(CLI::PositiveNumber);  // its old name
  auto* shape = sub->add_option("--input-shape", a->input_shape, "the random float32 input's shape after the batch dimension")
                    ->delimiter(',')
                    ->type_name("D,...")
                    ->capture_default_str();
  a->data.add_to(sub, DataUse::Bench);
  sub->get_option("--data")->excludes(shape);
  sub->add_option("--runs", a->runs, "timed runs of each model")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--warmup", a->warmup, "untimed runs first")->capture_default_str()->check(CLI::NonNegativeNumber);
  add_precision_options(sub, a->precision, a->memory_format);
  sub->add_flag("--json", a->json, "print the figures as JSON on stdout");
  sub->add_flag("--memory-probe", a->memory_probe)->group("");  // internal: see measure_memory
  return {sub, [a] { run_bench(*a); }};
}

}  // namespace ttq::cli
