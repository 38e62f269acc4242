#include "formats/torchscript.h"

#include <caffe2/serialize/inline_container.h>

#include "core/error.h"
#include "core/util.h"
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

}  // namespace

LoadedModel load_torchscript(const std::string& path) {
  open_torchscript_zip(path);

  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
  LoadedModel loaded;
  try {
    loaded.module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const c10::Error& e) {
    throw input_error(fmt::format("{}: LibTorch cannot load this TorchScript model: {}", path, short_message(e.what_without_backtrace())));
  }
  if (!extra[kMetadataFile].empty()) loaded.metadata = metadata_from_json(extra[kMetadataFile], path);
  return loaded;
}

std::optional<ModelMetadata> read_torchscript_metadata(const std::string& path) {
  const auto reader = open_torchscript_zip(path);
  const std::string record = std::string("extra/") + kMetadataFile;
  if (!reader->hasRecord(record)) return std::nullopt;
  try {
    const auto [data, size] = reader->getRecord(record);
    return metadata_from_json(std::string(static_cast<const char*>(data.get()), size), path);
  } catch (const c10::Error& e) {
    throw input_error(fmt::format("{}: cannot read {}: {}", path, kMetadataFile, short_message(e.what_without_backtrace())));
  }
}

void save_torchscript(const torch::jit::Module& module, const std::optional<ModelMetadata>& metadata,
                      const std::string& path) {
  torch::jit::ExtraFilesMap extra;
  if (metadata) extra[kMetadataFile] = metadata_to_json(*metadata);
  write_atomically(path, [&](std::ostream& out) { module.save(out, extra); });
}

}  // namespace ttq
