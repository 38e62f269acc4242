#include "formats/torchscript.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/serialize.h>
#include <torch/version.h>

#include <regex>

#include "core/error.h"
#include "core/util.h"
#include "core/layers.h"
#include "core/packed_model.h"
#include "formats/atomic_file.h"

namespace ttq {
namespace {

// TorchScript archives are zip files holding code/ and constants.pkl; torch.save() writes a zip
// with data.pkl only (or, before PyTorch 1.6, a raw pickle). Tell them apart before loading.
std::unique_ptr<caffe2::serialize::PyTorchStreamReader> open_torchscript_zip(const std::string& path) {
  check_readable(path);
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const c10::Error&) {
    throw input_error(fmt::format("{}: not a TorchScript model (not a PyTorch zip archive)", path));
  }
  if (!reader->hasRecord("constants.pkl")) {
    if (reader->hasRecord("data.pkl"))
      throw input_error(fmt::format(
          "{}: a torch.save() pickle, not a TorchScript model; in Python, save it with "
          "torch.jit.save(torch.jit.script(model), path)", path));
    throw input_error(fmt::format("{}: not a TorchScript model (no constants.pkl in the archive)", path));
  }
  return reader;
}

// The bytes of the extra file `name` inside a TorchScript archive, without loading the program;
// none where it has no such file.
std::optional<std::string> read_extra_file(const std::string& path, const char* name) {
  const auto reader = open_torchscript_zip(path);
  const std::string record = std::string("extra/") + name;
  if (!reader->hasRecord(record)) return std::nullopt;
  try {
    const auto [data, size] = reader->getRecord(record);
    return std::string(static_cast<const char*>(data.get()), size);
  } catch (const c10::Error& e) {
    throw input_error(fmt::format("{}: cannot read {}: {}", path, name, short_message(e.what_without_backtrace())));
  }
}

// The tensors a packed model set aside (kUnreadFile), by name; none in a file without them.
std::map<std::string, torch::Tensor> read_unread_tensors(const std::string& path) {
  std::map<std::string, torch::Tensor> tensors;
  const auto bytes = read_extra_file(path, kUnreadFile);
  if (!bytes) return tensors;
  try {
    const c10::IValue pairs = torch::pickle_load(std::vector<char>(bytes->begin(), bytes->end()));
    for (const auto& pair : pairs.toTupleRef().elements())
      tensors.emplace(pair.toTupleRef().elements().at(0).toStringRef(), pair.toTupleRef().elements().at(1).toTensor());
  } catch (const std::exception& e) {  // a malformed pickle, or not a tuple of pairs
    throw input_error(fmt::format("{}: cannot read {}: {}", path, kUnreadFile, short_message(e.what())));
  }
  return tensors;
}

}  // namespace

Error load_failure(const std::string& path, const std::string& what, const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  const std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  // TorchScript's compiler: "Unknown builtin op: aten::scaled_dot_product_attention."
  static const std::regex unknown_op(R"(Unknown builtin op: ([A-Za-z_][\w:.]*\w))");
  std::smatch op;
  if (std::regex_search(text, op, unknown_op))
    return input_error(fmt::format(
        "{}: calls {}, an operator that LibTorch {} (which this ttq runs on) does not have: it was saved by a "
        "newer PyTorch; use a ttq built against {}", path, op[1].str(), libtorch_version(),
        TORCH_VERSION_MAJOR < 2 ? "LibTorch 2.x (README: PyTorch 2.x)" : "that PyTorch's LibTorch"));
  return input_error(fmt::format("{}: {}: {}", path, what, short_message(text)));
}

LoadedModel load_torchscript(const std::string& path) {
  open_torchscript_zip(path);

  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}, {kProgramFile, ""}};
  LoadedModel loaded;
  try {
    loaded.module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception& e) {  // the compiler's ErrorReport is no c10::Error
    throw load_failure(path, "LibTorch cannot load this TorchScript model", e);
  }
  if (!extra[kMetadataFile].empty()) loaded.metadata = metadata_from_json(extra[kMetadataFile], path);
  loaded.float_program = std::move(extra[kProgramFile]);
  return loaded;
}

std::optional<ModelMetadata> read_torchscript_metadata(const std::string& path) {
  const auto json = read_extra_file(path, kMetadataFile);
  if (!json) return std::nullopt;
  return metadata_from_json(*json, path);
}

void save_torchscript(const torch::jit::Module& module, const std::optional<ModelMetadata>& metadata,
                      const std::string& path, const std::string& float_program,
                      const std::map<std::string, torch::Tensor>& unread) {
  torch::jit::ExtraFilesMap extra;
  if (metadata) extra[kMetadataFile] = metadata_to_json(*metadata);
  if (!float_program.empty()) extra[kProgramFile] = float_program;
  if (!unread.empty()) {
    // A tuple of (name, tensor) pairs: a dict would carry a type tag that PyTorch 2.6's torch.load
    // refuses by default (weights_only).
    std::vector<c10::IValue> pairs;
    for (const auto& [name, t] : unread) pairs.emplace_back(c10::ivalue::Tuple::create({name, t}));
    const std::vector<char> bytes = torch::pickle_save(c10::ivalue::Tuple::create(std::move(pairs)));
    extra[kUnreadFile] = std::string(bytes.begin(), bytes.end());
  }
  write_atomically(path, [&](std::ostream& out) { module.save(out, extra); });
}

std::string program_without_tensors(torch::jit::Module module) {
  const auto tensors = module_tensors(module);
  for (const auto& [name, t, _] : tensors) set_parameter(module, name, torch::empty({0}, t.options()));
  std::ostringstream program;
  try {
    module.save(program);
  } catch (...) {
    for (const auto& [name, t, _] : tensors) set_parameter(module, name, t);
    throw;
  }
  for (const auto& [name, t, _] : tensors) set_parameter(module, name, t);
  return program.str();
}

LoadedModel restore_packed(const LoadedModel& packed, const std::string& path) {
  if (packed.float_program.empty())
    throw input_error(fmt::format("{}: a packed model without its original program ({})", path, kProgramFile));
  LoadedModel restored;
  try {
    std::istringstream program(packed.float_program);
    restored.module = torch::jit::load(program, torch::kCPU);
  } catch (const std::exception& e) {
    throw load_failure(path, fmt::format("the original program ({}) does not load", kProgramFile), e);
  }
  restored.metadata = packed.metadata;
  restored.metadata->packed.clear();
  restored.metadata->calibration.reset();
  restored.metadata->activations.clear();
  const auto& packed_names = packed.metadata->packed;
  const auto activations = parse_choice<Activations>(packed.metadata->activations);
  if (!activations)
    throw input_error(fmt::format("{}: packed with unknown activations \"{}\"", path, packed.metadata->activations));
  torch::NoGradGuard no_grad;
  const auto unread = read_unread_tensors(path);
  for (const auto& [name, empty, _] : module_tensors(restored.module)) {
    const LayerRecord* layer = packed.metadata->find(name);
    torch::Tensor value;
    if (layer && std::find(packed_names.begin(), packed_names.end(), name) != packed_names.end()) {
      value = unpacked_weight(packed.module, *layer, *activations);
    } else if (const auto it = unread.find(name); it != unread.end()) {
      value = it->second;
    } else {
      const ParameterSlot slot = find_slot(packed.module, name);
      value = slot.owner.attr(slot.attribute).toTensor();
      if (value.numel() == 0 && slot.owner.hasattr(eight_bit_name(slot.attribute))) {
        // A float layer kept in 8 bits, its float weight emptied (a linear layer's): q · step.
        const auto q = slot.owner.attr(eight_bit_name(slot.attribute)).toTensor();
        std::vector<int64_t> per_row(static_cast<size_t>(q.dim()), 1);
        per_row[0] = q.size(0);
        value = q.to(torch::kFloat) * slot.owner.attr(weight_step_name(slot.attribute)).toTensor().view(per_row);
      }
    }
    value.set_requires_grad(empty.requires_grad() && value.is_floating_point());
    set_parameter(restored.module, name, value);
  }
  return restored;
}

}  // namespace ttq
