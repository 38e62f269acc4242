#!/usr/bin/env bash
# Export/restore benchmark; prints figures and ratios measured in this one run:
#  1. resnet18 (10 classes), quantized with the defaults and at sparsity 0.5: archive vs FP32 file,
#     codes vs entropy under each candidate encoding, coder speed, restore vs torch::jit::load;
#  2. vgg16 (138M parameters): peak memory of quantize/export/restore above LibTorch's own
#     baseline (the same commands on a tiny model), as a multiple of the FP32 model size.
# Usage: scripts/bench_export.sh [--no-large]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >&2; }
cmake --build build --target ttq_bench >&2
out=out/bench
mkdir -p "$out"
[[ -f $out/models/resnet18.pt ]] || /usr/bin/python3 scripts/make_fixtures.py "$out/models" >&2

for spec in "default:" "sparsity-0.5:--sparsity 0.5"; do
  name=${spec%%:*}; flags=${spec#*:}
  echo "== resnet18, quantize ${flags:-with defaults}"
  # shellcheck disable=SC2086
  build/ttq -q quantize "$out/models/resnet18.pt" -o "$out/resnet18.$name.pt" $flags >/dev/null
  build/tests/ttq_bench "$out/resnet18.$name.pt" "$out/models/resnet18.pt" "$out"
done

[[ ${1:-} == --no-large ]] && exit 0
echo "== vgg16: peak memory (max RSS) above LibTorch's baseline"
[[ -f $out/vgg16.pt ]] || /usr/bin/python3 - "$out/vgg16.pt" <<'PY'
import sys, torch, torchvision
torch.manual_seed(0)
torch.jit.save(torch.jit.script(torchvision.models.vgg16().eval()), sys.argv[1])
PY
peak_kb() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n 1; }
fp32=$(stat -c %s "$out/vgg16.pt")
base_q=$(peak_kb build/ttq -q quantize "$out/models/small_cnn.pt" -o "$out/small.pt")
base_e=$(peak_kb build/ttq -q export "$out/small.pt" -o "$out/small.ttqz")
base_r=$(peak_kb build/ttq -q export "$out/small.ttqz" -o "$out/small.r.pt")
t0=$(date +%s.%N)
q=$(peak_kb build/ttq -q quantize "$out/vgg16.pt" -o "$out/vgg16.ttq.pt")
t1=$(date +%s.%N)
e=$(peak_kb build/ttq -q export "$out/vgg16.ttq.pt" -o "$out/vgg16.ttqz")
t2=$(date +%s.%N)
r=$(peak_kb build/ttq -q export "$out/vgg16.ttqz" -o "$out/vgg16.r.pt")
t3=$(date +%s.%N)
awk -v fp32="$fp32" -v bq="$base_q" -v be="$base_e" -v br="$base_r" -v q="$q" -v e="$e" -v r="$r" \
    -v tq="$(echo "$t1 - $t0" | bc)" -v te="$(echo "$t2 - $t1" | bc)" -v tr="$(echo "$t3 - $t2" | bc)" \
    -v archive="$(stat -c %s "$out/vgg16.ttqz")" 'BEGIN {
  mb = 1048576
  printf "FP32 model %.0f MiB; archive %.1f MiB (%.2fx smaller)\n", fp32/mb, archive/mb, fp32/archive
  printf "%-9s %8s %10s %10s %16s\n", "command", "time s", "peak MiB", "base MiB", "above/FP32 size"
  printf "%-9s %8.1f %10.0f %10.0f %16.2f\n", "quantize", tq, q/1024, bq/1024, (q-bq)*1024/fp32
  printf "%-9s %8.1f %10.0f %10.0f %16.2f\n", "export", te, e/1024, be/1024, (e-be)*1024/fp32
  printf "%-9s %8.1f %10.0f %10.0f %16.2f\n", "restore", tr, r/1024, br/1024, (r-br)*1024/fp32
}'
