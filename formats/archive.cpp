#include "formats/archive.h"

#include <cmath>
#include <cstring>
#include <future>
#include <sstream>

#include "core/error.h"
#include "core/layers.h"
#include "core/util.h"
#include "formats/atomic_file.h"
#include "formats/metadata.h"
#include "formats/torchscript.h"
#include "formats/ternary_codec.h"
#include "formats/ttqz.h"

namespace ttq {
namespace {

std::string dtype_name(torch::Dtype d) {
  for (const auto& e : ttqz::kDtypes)
    if (e.scalar_type == static_cast<int>(d)) return e.name;
  throw input_error(fmt::format("tensors of dtype {} cannot be exported", c10::toString(d)));
}

torch::Dtype dtype_of(const std::string& name) {
  for (const auto& e : ttqz::kDtypes)
    if (name == e.name) return static_cast<torch::Dtype>(e.scalar_type);
  throw input_error(fmt::format("unknown dtype '{}'", name));
}

std::vector<uint8_t> tensor_bytes(const torch::Tensor& t) {
  const auto c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + c.numel() * c.element_size());
}

// Maps each weight to its code; an error when a value is not one of the layer's three levels.
std::vector<uint8_t> ternary_symbols_of(const torch::Tensor& weight, const LayerRecord& layer) {
  const auto w = weight.detach().to(torch::kFloat).contiguous();
  const float* v = w.data_ptr<float>();
  std::vector<uint8_t> symbols(static_cast<size_t>(w.numel()));
  for (size_t i = 0; i < symbols.size(); ++i) {
    if (v[i] == layer.wp) symbols[i] = kSymbolPos;
    else if (v[i] == 0.0f) symbols[i] = kSymbolZero;
    else if (v[i] == -layer.wn) symbols[i] = kSymbolNeg;
    else
      throw input_error(fmt::format("{}: weight {} of layer {} is {}, not one of -Wn, 0, +Wp ({}, 0, {}); "
                                    "the file's weights no longer match its TTQ metadata",
                                    "export", i, layer.name, v[i], -layer.wn, layer.wp));
  }
  return symbols;
}

torch::Tensor ternary_tensor(const ttqz::Archive& archive, const ttqz::TensorEntry& e) {
  auto out = torch::empty(e.shape, torch::TensorOptions().dtype(torch::kFloat));
  ttqz::ternary_values(archive, e, out.data_ptr<float>());
  return out.to(dtype_of(e.dtype));
}

torch::Tensor raw_tensor(const std::vector<uint8_t>& bytes, const ttqz::TensorEntry& e) {
  auto out = torch::empty(e.shape, torch::TensorOptions().dtype(dtype_of(e.stored_dtype)));
  if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
  return out.to(dtype_of(e.dtype));
}

}  // namespace

void write_archive(const torch::jit::Module& module, const ModelMetadata& metadata,
                   const ExportOptions& options, const std::string& path) {
  torch::NoGradGuard no_grad;
  const auto tensors = module_tensors(module);
  std::vector<ttqz::TensorEntry> entries;
  std::vector<ttqz::Payload> payloads;
  for (const auto& t : tensors) {
    ttqz::TensorEntry e;
    e.name = t.name;
    e.is_parameter = t.is_parameter;
    e.requires_grad = t.value.requires_grad();
    e.shape = t.value.sizes().vec();
    e.dtype = dtype_name(t.value.scalar_type());
    e.section = static_cast<uint32_t>(payloads.size());
    const LayerRecord* layer = t.is_parameter ? metadata.find(t.name) : nullptr;
    if (layer) {
      if (!std::isfinite(layer->wp) || !std::isfinite(layer->wn))
        throw input_error(fmt::format("layer {} has a non-finite scale (Wp {}, Wn {}); it cannot be exported",
                                      layer->name, layer->wp, layer->wn));
      const auto symbols = ternary_symbols_of(t.value, *layer);
      e.encoding = ttqz::Encoding::TernaryRans;
      e.wp = layer->wp;
      e.wn = layer->wn;
      for (const uint8_t s : symbols) (s == kSymbolNeg ? e.counts.neg : s == kSymbolZero ? e.counts.zero : e.counts.pos) += 1;
      payloads.push_back({encode_ternary(symbols.data(), symbols.size()), false});
    } else {
      torch::Tensor stored = t.value.detach();
      if (stored.scalar_type() == torch::kFloat32 && options.fp_dtype != FpDtype::Float32)
        stored = stored.to(options.fp_dtype == FpDtype::Float16 ? torch::kFloat16 : torch::kBFloat16);
      e.stored_dtype = dtype_name(stored.scalar_type());
      payloads.push_back({tensor_bytes(stored), true});
    }
    entries.push_back(std::move(e));
  }
  const std::string text = program_without_tensors(module);
  const std::vector<uint8_t> program(text.begin(), text.end());

  write_atomically(path, [&](std::ostream& out) {
    ttqz::write(out, metadata_to_json(metadata), program, std::move(entries), payloads, options.level);
  });
}

ttqz::Archive parse_archive(const std::vector<uint8_t>& bytes, const std::string& path) {
  try {
    return ttqz::parse(bytes.data(), bytes.size());
  } catch (const Error& e) {
    throw input_error(fmt::format("{}: {}", path, e.what()));
  }
}

LoadedModel read_archive(const std::string& path) {
  const auto bytes = read_file(path);
  const ttqz::Archive archive = parse_archive(bytes, path);

  // Compiling the program and decoding the tensors are independent: run them side by side.
  auto program = std::async(std::launch::async, [&] {
    const auto code = ttqz::section_bytes(archive, archive.program_section);
    std::istringstream stream(std::string(code.begin(), code.end()));
    return torch::jit::load(stream, torch::kCPU);
  });
  std::vector<torch::Tensor> tensors;
  try {
    torch::NoGradGuard no_grad;
    for (const auto& e : archive.tensors)
      tensors.push_back(e.encoding == ttqz::Encoding::TernaryRans
                            ? ternary_tensor(archive, e)
                            : raw_tensor(ttqz::section_bytes(archive, e.section), e));
  } catch (...) {
    program.wait();  // it reads `archive`
    throw;
  }

  LoadedModel restored;
  try {
    restored.module = program.get();
  } catch (const std::exception& e) {
    throw load_failure(path, "the archived TorchScript program does not load", e);
  }
  try {
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& e = archive.tensors[i];
      if (e.is_parameter && tensors[i].is_floating_point()) tensors[i].set_requires_grad(e.requires_grad);
      set_parameter(restored.module, e.name, tensors[i]);
    }
  } catch (const Error& e) {
    throw input_error(fmt::format("{}: {}", path, e.what()));
  } catch (const c10::Error& e) {
    throw input_error(fmt::format("{}: the archive does not fit its program: {}", path,
                                  short_message(e.what_without_backtrace())));
  }
  if (!archive.ttq_json.empty()) restored.metadata = metadata_from_json(archive.ttq_json, path);
  return restored;
}

torch::jit::Module load_archive(const std::string& path) { return read_archive(path).module; }

}  // namespace ttq
