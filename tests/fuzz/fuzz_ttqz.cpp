// libFuzzer target over the .ttqz reader: parse and validate, then decode every section that a
// restore would decode. Any exception other than ttq::Error, any sanitizer report, is a finding.
// Run with scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "formats/ttqz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr int64_t kDecodeCap = 1 << 22;  // larger claims are valid files we skip decoding
  try {
    const auto archive = ttq::ttqz::parse(data, size);
    if (archive.sections[1].raw_size <= kDecodeCap) ttq::ttqz::section_bytes(archive, 1);
    for (const auto& t : archive.tensors) {
      if (t.numel() > kDecodeCap) continue;
      if (t.encoding == ttq::ttqz::Encoding::TernaryRans)
        ttq::ttqz::ternary_symbols(archive, t);
      else
        ttq::ttqz::section_bytes(archive, t.section);
    }
    ttq::ttqz::summarize(archive);
  } catch (const ttq::Error&) {
  }
  return 0;
}
