#!/usr/bin/env bash
# Fuzzes the .ttqz reader with libFuzzer + AddressSanitizer + UBSan for SECONDS (default 60).
# Seeds are real archives exported from the test fixtures. Prints executions and findings;
# exits non-zero when the fuzzer found a crash (the input is kept in build-fuzz/).
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
scripts/setup.sh
missing=()
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

work=build-fuzz
mkdir -p "$work/seeds" "$work/corpus"
/usr/bin/python3 scripts/make_fixtures.py "$work/models" >/dev/null
build/ttq -q quantize "$work/models/small_cnn.pt" -o "$work/models/small_cnn.ttq.pt" --quantize-first --quantize-last >/dev/null
build/ttq -q export "$work/models/small_cnn.ttq.pt" -o "$work/seeds/small_cnn.ttqz" --json >/dev/null
build/ttq -q quantize "$work/models/one_layer.pt" -o "$work/models/one_layer.ttq.pt" --quantize-first --quantize-last >/dev/null
build/ttq -q export "$work/models/one_layer.ttq.pt" -o "$work/seeds/one_layer.ttqz" --fp-dtype bf16 --json >/dev/null

generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
[[ -f $work/CMakeCache.txt ]] || cmake -S . -B "$work" "${generator[@]}" -DTTQ_FUZZ=ON \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
cmake --build "$work" --target fuzz_ttqz >&2

cd "$work"
set +e
./fuzz_ttqz corpus seeds -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 \
  -print_final_stats=1 2> fuzz.log
rc=$?
set -e
grep -E "stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY" fuzz.log || true
crashes=$( (ls crash-* leak-* oom-* timeout-* 2>/dev/null || true) | wc -l)
echo "fuzz: ${seconds}s, $(grep -oP 'stat::number_of_executed_units: \K\d+' fuzz.log) executions, ${crashes} findings, corpus $(ls corpus | wc -l) inputs"
exit $rc
