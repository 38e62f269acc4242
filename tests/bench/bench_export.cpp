// Benchmark of the .ttqz path, printed as ratios measured in one run (scripts/bench_export.sh):
// - size of the ternary codes under candidate encodings vs their order-0 entropy;
// - rANS encode and decode speed;
// - export time, and restore time vs torch::jit::load of the FP32 TorchScript file.
// Usage: ttq_bench QUANTIZED.pt FP32.pt WORKDIR
#include <ATen/Parallel.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <sstream>

#include "core/util.h"
#include "formats/archive.h"
#include "formats/ternary_codec.h"
#include "formats/torchscript.h"

using namespace ttq;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <class F>
double median_seconds(int runs, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<uint8_t> pack_2bit(const std::vector<uint8_t>& s) {
  std::vector<uint8_t> out((s.size() + 3) / 4, 0);
  for (size_t i = 0; i < s.size(); ++i) out[i / 4] |= static_cast<uint8_t>(s[i] << (2 * (i % 4)));
  return out;
}

std::vector<uint8_t> pack_base3(const std::vector<uint8_t>& s) {
  std::vector<uint8_t> out((s.size() + 4) / 5, 0);
  static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
  for (size_t i = 0; i < s.size(); ++i) out[i / 5] += static_cast<uint8_t>(s[i] * pow3[i % 5]);
  return out;
}

size_t zstd_size(const std::vector<uint8_t>& raw, int level) {
  std::vector<uint8_t> out(ZSTD_compressBound(raw.size()));
  return ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), level);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    fmt::print(stderr, "usage: ttq_bench QUANTIZED.pt FP32.pt WORKDIR\n");
    return 2;
  }
  const std::string quantized = argv[1], fp32 = argv[2], work = argv[3];
  at::set_num_threads(1);
  const LoadedModel model = load_torchscript(quantized);
  if (!model.metadata) {
    fmt::print(stderr, "{} has no TTQ metadata\n", quantized);
    return 1;
  }

  // Codes of every ternary layer.
  std::vector<std::vector<uint8_t>> layers;
  double entropy_bytes = 0;
  int64_t codes = 0;
  for (const auto& p : model.module.named_parameters()) {
    const LayerRecord* r = model.metadata->find(p.name);
    if (!r) continue;
    const auto sym = torch::where(p.value == r->wp, 2, torch::where(p.value == 0, 1, 0)).to(torch::kUInt8).contiguous();
    layers.emplace_back(sym.data_ptr<uint8_t>(), sym.data_ptr<uint8_t>() + sym.numel());
    entropy_bytes += r->counts.entropy_bits() * sym.numel() / 8.0;
    codes += sym.numel();
  }

  struct Candidate {
    const char* name;
    std::function<size_t(const std::vector<uint8_t>&)> size;
  };
  const std::vector<Candidate> candidates = {
      {"2-bit packed", [](const auto& s) { return pack_2bit(s).size(); }},
      {"2-bit packed + zstd -3", [](const auto& s) { return zstd_size(pack_2bit(s), 3); }},
      {"2-bit packed + zstd -19", [](const auto& s) { return zstd_size(pack_2bit(s), 19); }},
      {"base-3 packed (5 per byte)", [](const auto& s) { return pack_base3(s).size(); }},
      {"base-3 packed + zstd -3", [](const auto& s) { return zstd_size(pack_base3(s), 3); }},
      {"base-3 packed + zstd -19", [](const auto& s) { return zstd_size(pack_base3(s), 19); }},
      {"static rANS (ttq)", [](const auto& s) { return encode_ternary(s.data(), s.size()).size(); }},
  };
  fmt::print("codes: {} layers, {} weights, entropy {:.0f} bytes ({:.4f} bits/weight)\n", layers.size(), codes,
             entropy_bytes, 8 * entropy_bytes / codes);
  fmt::print("{:<30} {:>12} {:>10} {:>12}\n", "encoding", "bytes", "bits/w", "x entropy");
  for (const auto& c : candidates) {
    size_t total = 0;
    for (const auto& s : layers) total += c.size(s);
    fmt::print("{:<30} {:>12} {:>10.4f} {:>12.4f}\n", c.name, total, 8.0 * total / codes, total / entropy_bytes);
  }
  double worst = 0;
  for (const auto& s : layers) {
    CodeCounts cc;
    for (const uint8_t v : s) (v == 0 ? cc.neg : v == 1 ? cc.zero : cc.pos) += 1;
    worst = std::max(worst, encode_ternary(s.data(), s.size()).size() / (cc.entropy_bits() * s.size() / 8.0));
  }
  fmt::print("rANS worst layer: {:.4f}x its entropy\n", worst);

  // Coder speed, in codes per second and in MB/s of the float32 weights they stand for.
  std::vector<std::vector<uint8_t>> encoded;
  const double t_enc = median_seconds(3, [&] {
    encoded.clear();
    for (const auto& s : layers) encoded.push_back(encode_ternary(s.data(), s.size()));
  });
  std::vector<uint8_t> out;
  const double t_dec = median_seconds(3, [&] {
    for (size_t i = 0; i < layers.size(); ++i) {
      out.resize(layers[i].size());
      decode_ternary(encoded[i].data(), encoded[i].size(), out.size(), out.data());
    }
  });
  fmt::print("rANS encode: {:.0f} M codes/s ({:.0f} MB/s of fp32 weights); decode: {:.0f} M codes/s ({:.0f} MB/s)\n",
             codes / t_enc / 1e6, 4.0 * codes / t_enc / 1e6, codes / t_dec / 1e6, 4.0 * codes / t_dec / 1e6);

  // Export and restore against LibTorch's own loader.
  const std::string archive = work + "/bench.ttqz";
  const double t_export = median_seconds(3, [&] { write_archive(model.module, *model.metadata, {}, archive); });
  const double t_restore = median_seconds(11, [&] { read_archive(archive); });
  const double t_jit = median_seconds(11, [&] { torch::jit::load(fp32); });
  const double t_jit_q = median_seconds(5, [&] { load_torchscript(quantized); });
  // Where restore spends its time: the TorchScript program alone (compiling its code).
  const auto archive_bytes = read_file(archive);
  const auto parsed = parse_archive(archive_bytes, archive);
  const auto program = ttqz::section_bytes(parsed, parsed.program_section);
  const double t_program = median_seconds(5, [&] {
    std::istringstream in(std::string(program.begin(), program.end()));
    torch::jit::load(in);
  });
  fmt::print("export: {:.3f} s; archive {} bytes vs FP32 file {} bytes: {:.2f}x smaller\n", t_export,
             std::filesystem::file_size(archive), std::filesystem::file_size(fp32),
             double(std::filesystem::file_size(fp32)) / std::filesystem::file_size(archive));
  fmt::print("restore .ttqz: {:.1f} ms; torch::jit::load FP32 file: {:.1f} ms (quantized .pt with metadata: {:.1f} ms); "
             "restore/jit::load = {:.3f}\n", 1e3 * t_restore, 1e3 * t_jit, 1e3 * t_jit_q, t_restore / t_jit);
  fmt::print("restore breakdown: program load {:.1f} ms, codes decode {:.1f} ms, rest {:.1f} ms\n", 1e3 * t_program,
             1e3 * t_dec, 1e3 * (t_restore - t_program - t_dec));
  return 0;
}
