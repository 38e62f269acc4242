#!/usr/bin/env bash
# The paper's deeper-ResNet claim (its Table 1) on data we have: CIFAR-style ResNets
# (scripts/make_resnet20.py, depth 20/32/44/56, adapted to 1x28x28) are trained in full precision on
# Fashion-MNIST with `ttq finetune --fp`, then fine-tuned from that checkpoint twice with the same
# epochs: TTQ alone, and TTQ distilled from the FP model (`--distill`: KL at T=4, alpha 0.5, with
# the labels). Prints, per depth, the three test errors, the gaps, epochs and wall times, then the
# table as the paper's (error of FP and TTQ per depth, and the improvement FP - TTQ). The paper, on
# CIFAR-10: ResNet-20 8.23 -> 8.87%, ResNet-32 7.67 -> 7.63%, ResNet-44 7.18 -> 7.02%, ResNet-56
# 6.80 -> 6.44%.
# Usage: scripts/bench_accuracy.sh [FP_EPOCHS [TTQ_EPOCHS [THREADS [DEPTHS [SUBSET [PRECISION]]]]]]
#   defaults 4 6 2 "20 32 44 56" 0 auto (SUBSET 0: all 60000 training images; PRECISION as
#   finetune's --precision, auto being bf16 on CPUs that compute it natively). A quick look:
#   scripts/bench_accuracy.sh 3 3 2 32 10000.
set -euo pipefail
cd "$(dirname "$0")/.."
fp_epochs=${1:-4}; ttq_epochs=${2:-6}; threads=${3:-2}; depths=${4:-20 32 44 56}; subset=${5:-0}
precision=${6:-auto}
scripts/setup.sh
out=out/bench_accuracy
mkdir -p "$out"
results="$out/results.tsv"
: >"$results"
common=(--threads "$threads" --batch-size 128 --no-progress --crop-padding 2 --subset "$subset"
  --precision "$precision" --keep last)
top1() {
  build/ttq eval "$1" --json --threads "$threads" --precision "$precision" |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["top1"])'
}

for depth in ${depths//,/ }; do
  net="$out/resnet$depth"
  /usr/bin/python3 scripts/make_resnet20.py "$net.pt" 0 "$depth"
  t0=$(date +%s)
  # Full precision: SGD, lr 0.1 with a cosine schedule (the paper's CIFAR recipe, shortened).
  build/ttq finetune "$net.pt" -o "$net.fp.pt" --fp --epochs "$fp_epochs" --optimizer sgd --lr 0.1 \
    --weight-decay 2e-4 --log "$net.fp.jsonl" "${common[@]}" >&2
  t1=$(date +%s)
  # TTQ from the FP checkpoint: the paper's settings (Wp = Wn = 1 start, BatchNorm everywhere,
  # weight decay on scales too), first and last layers full precision.
  ttq_args=(--epochs "$ttq_epochs" --optimizer sgd --lr 0.01 --init ones --weight-decay 2e-4 "${common[@]}")
  build/ttq finetune "$net.fp.pt" -o "$net.ttq.pt" --log "$net.ttq.jsonl" "${ttq_args[@]}" >&2
  t2=$(date +%s)
  build/ttq finetune "$net.fp.pt" -o "$net.distill.pt" --distill --log "$net.distill.jsonl" \
    "${ttq_args[@]}" >&2
  t3=$(date +%s)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$depth" "$(top1 "$net.fp.pt")" "$(top1 "$net.ttq.pt")" \
    "$(top1 "$net.distill.pt")" "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))" >>"$results"
done

/usr/bin/python3 - "$results" "$fp_epochs" "$ttq_epochs" "$subset" "$precision" "$threads" <<'PY'
import sys
results, fp_epochs, ttq_epochs, subset, precision, threads = sys.argv[1:]
images = "all 60000" if subset == "0" else f"the first {subset}"
print(f"CIFAR-style ResNets on Fashion-MNIST ({images} training images; test set of 10000 images);"
      f" FP {fp_epochs} epochs, TTQ {ttq_epochs} epochs from the FP model; --precision {precision},"
      f" {threads} threads")
rows = [line.split("\t") for line in open(results).read().splitlines()]
for depth, fp, tq, kd, t_fp, t_tq, t_kd in rows:
    fp, tq, kd = (100 * (1 - float(v)) for v in (fp, tq, kd))
    print(f"ResNet-{depth}: FP error {fp:.2f}% ({t_fp} s), TTQ {tq:.2f}% ({t_tq} s),"
          f" TTQ + distillation {kd:.2f}% ({t_kd} s)")
print()
print("| model | full precision | TTQ | improvement | TTQ + distillation | improvement |")
print("|---|---|---|---|---|---|")
for depth, fp, tq, kd, *_ in rows:
    fp, tq, kd = (100 * (1 - float(v)) for v in (fp, tq, kd))
    print(f"| ResNet-{depth} | {fp:.2f}% | {tq:.2f}% | {fp - tq:+.2f} pp | {kd:.2f}% | {fp - kd:+.2f} pp |")
PY
