// formats/ternary_codec: entropy coding near the bound, bit-exact round trips, the levels decoder
// of restore's hot path, and streams that do not match refused.
#include "catch.h"

#include <random>

#include "core/code_counts.h"
#include "core/error.h"
#include "formats/ternary_codec.h"

using namespace ttq;

namespace {

std::vector<uint8_t> random_symbols(size_t n, double p_zero, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<uint8_t> s(n);
  for (auto& v : s) {
    const double r = u(rng);
    v = r < p_zero ? kSymbolZero : r < p_zero + (1 - p_zero) / 2 ? kSymbolNeg : kSymbolPos;
  }
  return s;
}

double entropy_bits(const std::vector<uint8_t>& s) {
  CodeCounts c;
  for (const uint8_t v : s) (v == kSymbolNeg ? c.neg : v == kSymbolZero ? c.zero : c.pos) += 1;
  return c.entropy_bits();
}

}  // namespace

// The coder adds a fixed 14 bytes (frequency table and two final states) to n·H/8: within 2% of the
// entropy once a tensor's codes take 700 bytes or more.
TEST_CASE("rANS round-trips ternary codes within 2 percent of their entropy plus 14 bytes") {
  for (double p_zero : {0.05, 0.18, 0.3, 0.5, 0.7, 0.95}) {
    for (size_t n : {size_t(8192), size_t(100000), size_t(1) << 20}) {
      const auto symbols = random_symbols(n, p_zero, static_cast<uint32_t>(n + p_zero * 100));
      const auto coded = encode_ternary(symbols.data(), n);
      std::vector<uint8_t> back(n);
      decode_ternary(coded.data(), coded.size(), n, back.data());
      CAPTURE(p_zero, n);
      CHECK(back == symbols);
      const double entropy_bytes = entropy_bits(symbols) * n / 8.0;
      CHECK(coded.size() <= 1.02 * entropy_bytes + 14);
      if (entropy_bytes >= 700) CHECK(coded.size() <= 1.02 * entropy_bytes);
    }
  }
}

TEST_CASE("rANS handles degenerate inputs") {
  for (const auto& symbols : {std::vector<uint8_t>{}, std::vector<uint8_t>(1000, kSymbolZero),
                              std::vector<uint8_t>{kSymbolPos}, std::vector<uint8_t>{2, 0, 2, 0, 1}}) {
    const auto coded = encode_ternary(symbols.data(), symbols.size());
    std::vector<uint8_t> back(symbols.size());
    decode_ternary(coded.data(), coded.size(), symbols.size(), back.data());
    CHECK(back == symbols);
  }
  // One rare symbol among a million: its frequency is still at least 1.
  auto rare = std::vector<uint8_t>(1 << 20, kSymbolZero);
  rare[12345] = kSymbolNeg;
  const auto coded = encode_ternary(rare.data(), rare.size());
  std::vector<uint8_t> back(rare.size());
  decode_ternary(coded.data(), coded.size(), rare.size(), back.data());
  CHECK(back == rare);
}

TEST_CASE("rANS rejects truncated, extended and mismatched streams") {
  const auto symbols = random_symbols(5000, 0.4, 7);
  const auto coded = encode_ternary(symbols.data(), symbols.size());
  std::vector<uint8_t> out(symbols.size() + 1);
  auto shorter = coded;
  shorter.pop_back();
  CHECK_THROWS_AS(decode_ternary(shorter.data(), shorter.size(), symbols.size(), out.data()), Error);
  auto longer = coded;
  longer.push_back(0);
  CHECK_THROWS_AS(decode_ternary(longer.data(), longer.size(), symbols.size(), out.data()), Error);
  CHECK_THROWS_AS(decode_ternary(coded.data(), coded.size(), symbols.size() + 1, out.data()), Error);
  CHECK_THROWS_AS(decode_ternary(coded.data(), 5, 0, out.data()), Error);
}

TEST_CASE("the levels decoder writes each symbol's level and counts the symbols") {
  const float levels[3] = {-0.25f, 0.0f, 0.75f};
  for (double p_zero : {0.0, 0.3, 0.9}) {
    const auto symbols = random_symbols(30011, p_zero, 11);
    const auto coded = encode_ternary(symbols.data(), symbols.size());
    std::vector<float> out(symbols.size(), 99.0f);
    int64_t counts[3] = {-1, -1, -1};
    decode_ternary_levels(coded.data(), coded.size(), symbols.size(), levels, out.data(), counts);
    int64_t expected[3] = {0, 0, 0};
    for (size_t i = 0; i < symbols.size(); ++i) {
      ++expected[symbols[i]];
      REQUIRE(out[i] == levels[symbols[i]]);
    }
    CAPTURE(p_zero);
    CHECK(counts[0] == expected[0]);
    CHECK(counts[1] == expected[1]);
    CHECK(counts[2] == expected[2]);
  }
  std::vector<float> out(10);
  int64_t counts[3];
  const auto coded = encode_ternary(random_symbols(10, 0.5, 3).data(), 10);
  CHECK_THROWS_AS(decode_ternary_levels(coded.data(), coded.size() - 1, 10, levels, out.data(), counts), Error);
}
