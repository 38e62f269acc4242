#!/usr/bin/env bash
# Packed ternary models against their float32 originals, measured side by side in one run with
# `ttq bench` (runs alternated; memory in a fresh process per model): latency, resident memory once
# loaded and file size, for
#  - one 4096x4096 linear layer at batch 1 and 64 (targets: >= 2.5x faster at batch 1, no slower at 64);
#  - a 3-layer MLP 4096 wide at batch 1 (memory target: >= 10x less, also after a run);
#  - torchvision's ResNet-18 at 224x224, batch 1 (target: no more than 1.1x the FP32 latency;
#    >= 10x less memory once loaded; the packed file >= 12x smaller).
# The float32 side is the ternary model with float32 weights: the same arithmetic as the FP32 model.
# Usage: scripts/bench_packed.sh [RUNS [THREADS]]   (defaults 20 and one per core)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}; threads=${2:-$(nproc)}
scripts/setup.sh
out=out/bench_packed
mkdir -p "$out"
/usr/bin/python3 - "$out" <<'PY'
import sys, torch, torch.nn as nn, torchvision
out = sys.argv[1]
torch.manual_seed(0)
save = lambda m, name: torch.jit.save(torch.jit.script(m.eval()), f"{out}/{name}.pt")
save(nn.Sequential(nn.Linear(4096, 4096)), "linear4096")
save(nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096)), "mlp4096")
save(torchvision.models.resnet18(), "resnet18")
PY
bench() {  # NAME SHAPE BATCH [QUANTIZE FLAGS...]
  local name=$1 shape=$2 batch=$3; shift 3
  build/ttq quantize "$out/$name.pt" -o "$out/$name.ttq.pt" -q "$@" >/dev/null
  build/ttq export "$out/$name.ttq.pt" --format packed -o "$out/$name.packed.pt" >/dev/null
  build/ttq bench "$out/$name.packed.pt" --vs "$out/$name.ttq.pt" --input-shape "$shape" --batch "$batch" \
    --runs "$runs" --threads "$threads" --json > "$out/$name.$batch.json"
  /usr/bin/python3 - "$out/$name.$batch.json" "$name" "$batch" "$out/$name.ttq.pt" "$out/$name.packed.pt" <<'PY'
import json, os, sys
doc, name, batch = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
packed, fp = doc["models"]
size = os.path.getsize(sys.argv[4]) / os.path.getsize(sys.argv[5])
print(f"{name:<11} batch {batch:>2}: packed {packed['median_ms']:8.3f} ms, float32 {fp['median_ms']:8.3f} ms "
      f"-> {doc['speedup']:5.2f}x the speed; memory loaded {packed['loaded_mib']:6.1f} vs {fp['loaded_mib']:6.1f} MiB "
      f"({doc['memory_ratio']:.1f}x less), after a run {packed['after_run_mib']:6.1f} vs {fp['after_run_mib']:6.1f} MiB, "
      f"peak {packed['peak_mib']:6.1f} vs {fp['peak_mib']:6.1f} MiB; file {size:.1f}x smaller")
PY
}
echo "ttq bench, $runs runs, $threads thread(s), kernel path: $(/usr/bin/python3 -c "import torch; torch.ops.load_library('build/plugins/libttq_ops.so'); print(torch.ops.ttq.kernel())")"
bench linear4096 4096 1 --quantize-first --quantize-last
bench linear4096 4096 64 --quantize-first --quantize-last
bench mlp4096 4096 1 --quantize-first --quantize-last
bench resnet18 3,224,224 1
