#!/usr/bin/env bash
# bf16 against float32 on a trained model (issue targets: one TTQ epoch in bf16 within 0.15 pp of
# float32; eval in bf16 at least 1.8x faster, with the same predictions on at least 99.5% of the
# test images). From one trained FP model: one default TTQ epoch with --precision fp32 and with
# bf16 (same seed), both evaluated by ttq in float32; ttq eval of the FP model timed in fp32 and
# bf16; and the FP model's predictions in float32 against bf16 autocast (channels-last, as
# --memory-format auto takes for a ResNet on LibTorch 1.13), compared image by image in PyTorch.
# Usage: scripts/bench_precision.sh [FP_MODEL [THREADS]]
#   default: out/bench_accuracy/resnet20.fp.pt (scripts/bench_accuracy.sh trains it), 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
fp=${1:-out/bench_accuracy/resnet20.fp.pt}; threads=${2:-2}
scripts/setup.sh
[[ -f $fp ]] || { echo "bench_precision: $fp: no such model (scripts/bench_accuracy.sh 3 2 2 20 trains one)" >&2; exit 2; }
out=out/bench_precision
mkdir -p "$out"
top1() {
  build/ttq eval "$1" --json --threads "$threads" "${@:2}" |
    /usr/bin/python3 -c 'import json,sys; print("%.2f" % (100 * json.load(sys.stdin)["top1"]))'
}
for precision in fp32 bf16; do
  start=$(date +%s%N)
  build/ttq finetune "$fp" -o "$out/ttq.$precision.pt" --epochs 1 --precision "$precision" \
    --threads "$threads" --no-progress -q
  end=$(date +%s%N)
  echo "one TTQ epoch, --precision $precision: top-1 $(top1 "$out/ttq.$precision.pt")% (float32 eval)," \
    "$(((end - start) / 1000000)) ms"
done
for precision in fp32 bf16; do
  start=$(date +%s%N)
  t=$(top1 "$fp" --precision "$precision")
  end=$(date +%s%N)
  echo "ttq eval of $fp, --precision $precision: top-1 $t%, $(((end - start) / 1000000)) ms"
done
/usr/bin/python3 - "$fp" "$threads" <<'PY'
import os, sys
import torch
sys.path.insert(0, "scripts")
from demo_summary import DATA, MEAN, STD, read_idx, top1
torch.set_num_threads(int(sys.argv[2]))
model = torch.jit.load(sys.argv[1]).eval()
x = read_idx(os.path.join(DATA, "t10k-images-idx3-ubyte.gz"), 0x803).unsqueeze(1).float().div(255)
x = x.sub(MEAN).div(STD)
y = read_idx(os.path.join(DATA, "t10k-labels-idx1-ubyte.gz"), 0x801).long()
fp32, fp32_pred = top1(model, x, y)
with torch.autocast("cpu", torch.bfloat16):
    bf16, bf16_pred = top1(model, x.contiguous(memory_format=torch.channels_last), y)
agree = (fp32_pred == bf16_pred).float().mean().item()
print(f"PyTorch, {sys.argv[1]}: float32 top-1 {100 * fp32:.2f}%, bf16 autocast {100 * bf16:.2f}%;"
      f" same prediction on {100 * agree:.2f}% of the 10000 test images (target >= 99.5%)")
PY
