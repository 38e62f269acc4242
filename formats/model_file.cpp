#include "formats/model_file.h"

#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/packed_model.h"
#include "core/util.h"
#include "formats/archive.h"
#include "formats/torchscript.h"

namespace ttq {

std::optional<ModelFileKind> sniff_model_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[sizeof ttqz::kMagic] = {};
  in.read(magic, sizeof magic);
  if (std::memcmp(magic, ttqz::kMagic, sizeof magic) == 0) return ModelFileKind::Archive;
  if (std::memcmp(magic, "PK\x03\x04", 4) == 0) return ModelFileKind::TorchScript;
  return std::nullopt;
}

namespace {

// Zip files and the unknown go to the TorchScript reader, which names what they are.
ModelFileKind kind_of(const std::string& path) {
  check_readable(path);
  return sniff_model_file(path).value_or(ModelFileKind::TorchScript);
}

}  // namespace

OpenedModel open_model(const std::string& path, PackedAs packed) {
  OpenedModel opened;
  opened.kind = kind_of(path);
  static_cast<LoadedModel&>(opened) =
      opened.kind == ModelFileKind::Archive ? read_archive(path) : load_torchscript(path);
  if (opened.packed() && packed == PackedAs::Float) static_cast<LoadedModel&>(opened) = restore_packed(opened, path);
  if (opened.packed()) check_packed_layers(opened.module, opened.metadata->layers, opened.metadata->packed);
  release_free_memory();
  return opened;
}

torch::jit::Module load_packed(const std::string& path, Activations activations) {
  OpenedModel opened = open_model(path, PackedAs::Stored);
  if (opened.packed() && opened.metadata->activations == choice_name(activations)) return opened.module;
  if (opened.packed()) opened = open_model(path, PackedAs::Float);
  if (!opened.metadata || opened.metadata->layers.empty())
    throw input_error(fmt::format("{} has no TTQ metadata: run 'ttq quantize' (or finetune) first", path));
  const PackReport report = pack_module(opened.module, opened.metadata->layers, activations);
  if (report.packed.empty())
    throw input_error(fmt::format("{}: no ternary layer is a linear or conv2d weight that can run packed", path));
  opened.module.eval();
  release_free_memory();  // the float32 weights just packed
  return opened.module;
}

std::optional<ModelMetadata> read_model_metadata(const std::string& path) {
  if (kind_of(path) == ModelFileKind::TorchScript) return read_torchscript_metadata(path);
  const auto bytes = read_file(path);
  const auto archive = parse_archive(bytes, path);
  if (archive.ttq_json.empty()) return std::nullopt;
  return metadata_from_json(archive.ttq_json, path);
}

}  // namespace ttq
