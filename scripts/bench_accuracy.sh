#!/usr/bin/env bash
# The paper's deeper-ResNet claim on data we have: a CIFAR-style ResNet (scripts/make_resnet20.py,
# depth 20/32/44/56, adapted to 1x28x28) is trained in full precision on Fashion-MNIST with
# `ttq finetune --fp`, then fine-tuned from that checkpoint twice with the same epochs: TTQ alone,
# and TTQ distilled from the FP model (`--distill`: KL at T=4, alpha 0.5, with the labels). Prints
# the three test errors, the gaps, epochs and wall times. The paper: ResNet-32 on CIFAR-10,
# 7.67% FP -> 7.63% TTQ.
# Usage: scripts/bench_accuracy.sh [FP_EPOCHS [TTQ_EPOCHS [THREADS [DEPTH [SUBSET]]]]]
#   defaults 4 6 2 32 0 (SUBSET 0: all 60000 training images; about 90 min on 2 cores).
#   A quick look: scripts/bench_accuracy.sh 3 3 2 32 10000 (about 15 min).
set -euo pipefail
cd "$(dirname "$0")/.."
fp_epochs=${1:-4}; ttq_epochs=${2:-6}; threads=${3:-2}; depth=${4:-32}; subset=${5:-0}
scripts/setup.sh
out=out/bench_accuracy
mkdir -p "$out"
net="$out/resnet$depth"
/usr/bin/python3 scripts/make_resnet20.py "$net.pt" 0 "$depth"
common=(--threads "$threads" --batch-size 128 --no-progress --crop-padding 2 --subset "$subset")
t0=$(date +%s)
# Full precision: SGD, lr 0.1 with a cosine schedule (the paper's CIFAR recipe, shortened).
build/ttq finetune "$net.pt" -o "$net.fp.pt" --fp --epochs "$fp_epochs" --lr 0.1 \
  --weight-decay 2e-4 --log "$out/fp.jsonl" "${common[@]}" >&2
t1=$(date +%s)
# TTQ from the FP checkpoint: the paper's settings (Wp = Wn = 1 start, BatchNorm everywhere,
# weight decay on scales too), first and last layers full precision.
ttq_args=(--epochs "$ttq_epochs" --lr 0.01 --init ones --weight-decay 2e-4 "${common[@]}")
build/ttq finetune "$net.fp.pt" -o "$net.ttq.pt" --log "$out/ttq.jsonl" "${ttq_args[@]}" >&2
t2=$(date +%s)
build/ttq finetune "$net.fp.pt" -o "$net.distill.pt" --distill --log "$out/distill.jsonl" "${ttq_args[@]}" >&2
t3=$(date +%s)
top1() { build/ttq eval "$1" --json --threads "$threads" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["top1"])'; }
/usr/bin/python3 - "$depth" "$(top1 "$net.fp.pt")" "$(top1 "$net.ttq.pt")" "$(top1 "$net.distill.pt")" \
  "$fp_epochs" "$ttq_epochs" "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))" "$subset" <<'PY'
import sys
depth, fp, tq, kd = sys.argv[1], *map(float, sys.argv[2:5])
fp_epochs, ttq_epochs, t_fp, t_tq, t_kd, subset = sys.argv[5:]
images = "all 60000" if subset == "0" else f"the first {subset}"
print(f"ResNet-{depth} on Fashion-MNIST ({images} training images; test set of 10000 images)")
print(f"  full precision:      error {100 * (1 - fp):.2f}%  ({fp_epochs} epochs, {t_fp} s)")
print(f"  TTQ:                 error {100 * (1 - tq):.2f}%  ({ttq_epochs} epochs from the FP model, {t_tq} s)")
print(f"  TTQ + distillation:  error {100 * (1 - kd):.2f}%  ({ttq_epochs} epochs from the FP model, {t_kd} s)")
print(f"  TTQ - FP error: {100 * (fp - tq):+.2f} pp; TTQ+distillation - FP error: {100 * (fp - kd):+.2f} pp"
      f" (goal: <= 0)")
PY
