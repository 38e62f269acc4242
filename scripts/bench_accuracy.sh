#!/usr/bin/env bash
# The paper's claim on data we have: a CIFAR-style ResNet-20 (scripts/make_resnet20.py, adapted
# to 1x28x28) is trained in full precision on Fashion-MNIST with `ttq finetune --fp`, then
# fine-tuned with TTQ from that checkpoint; prints both test errors, the gap, epochs and wall time.
# Usage: scripts/bench_accuracy.sh [FP_EPOCHS [TTQ_EPOCHS [THREADS]]]   (defaults 4 6 2: about 35 min here)
set -euo pipefail
cd "$(dirname "$0")/.."
fp_epochs=${1:-4}; ttq_epochs=${2:-6}; threads=${3:-2}
scripts/setup.sh
out=out/bench_accuracy
mkdir -p "$out"
/usr/bin/python3 scripts/make_resnet20.py "$out/resnet20.pt"
common=(--threads "$threads" --batch-size 128 --no-progress --crop-padding 2)
t0=$(date +%s)
# Full precision: SGD, lr 0.1 with a cosine schedule (the paper's CIFAR recipe, shortened).
build/ttq finetune "$out/resnet20.pt" -o "$out/resnet20.fp.pt" --fp --epochs "$fp_epochs" --lr 0.1 \
  --weight-decay 2e-4 --log "$out/fp.jsonl" "${common[@]}" >&2
t1=$(date +%s)
# TTQ from the FP checkpoint: the paper's settings (Wp = Wn = 1 start, BatchNorm everywhere,
# weight decay on scales too), first and last layers full precision.
build/ttq finetune "$out/resnet20.fp.pt" -o "$out/resnet20.ttq.pt" --epochs "$ttq_epochs" --lr 0.01 \
  --init ones --weight-decay 2e-4 --log "$out/ttq.jsonl" "${common[@]}" >&2
t2=$(date +%s)
fp=$(build/ttq eval "$out/resnet20.fp.pt" --json --threads "$threads" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["top1"])')
tq=$(build/ttq eval "$out/resnet20.ttq.pt" --json --threads "$threads" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["top1"])')
/usr/bin/python3 - "$fp" "$tq" "$fp_epochs" "$ttq_epochs" "$((t1 - t0))" "$((t2 - t1))" <<'PY'
import sys
fp, tq = float(sys.argv[1]), float(sys.argv[2])
print(f"ResNet-20 on Fashion-MNIST test set (10000 images)")
print(f"  full precision: error {100 * (1 - fp):.2f}%  ({sys.argv[3]} epochs, {sys.argv[5]} s)")
print(f"  TTQ (ternary):  error {100 * (1 - tq):.2f}%  ({sys.argv[4]} epochs from the FP model, {sys.argv[6]} s)")
print(f"  gap: {100 * (fp - tq):+.2f} percentage points (target: within 0.5)")
PY
