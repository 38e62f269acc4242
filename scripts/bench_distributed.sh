#!/usr/bin/env bash
# Data-parallel throughput on this machine: one ttq process with all the cores against N local
# ranks (Gloo over 127.0.0.1) sharing them, the same global batch, measured in this one run.
# Prints samples/s of each and their ratio. Models: the CIFAR-style ResNet-20 (1x28x28, BatchNorm)
# and the small CNN; data: Fashion-MNIST.
# Usage: scripts/bench_distributed.sh [STEPS [RANKS [GLOBAL_BATCH]]]   (defaults 60 2 128)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60} ranks=${2:-2} batch=${3:-128}
cores=$(nproc)
scripts/setup.sh
out=out/bench_distributed
mkdir -p "$out"
/usr/bin/python3 scripts/make_resnet20.py "$out/resnet20.pt"
[[ -f $out/models/small_cnn.pt ]] || /usr/bin/python3 scripts/make_fixtures.py "$out/models" >&2

# The throughput of the run's last logged step: samples per second over the epoch so far, all
# ranks together, training only (no evaluation).
throughput() { grep '"type":"step"' "$1" | tail -n 1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["samples_per_second"])'; }

# One epoch of exactly $steps steps: --subset makes the epoch that long, so nothing but training
# is timed before the last step record.
common() {
  echo finetune "$1" --subset $((steps * batch)) --epochs 1 --log-every "$steps" --no-progress -q \
    --init mean --optimizer adam --lr 0.002
}

for model in resnet20 small_cnn; do
  path=$out/resnet20.pt; [[ $model == small_cnn ]] && path=$out/models/small_cnn.pt
  # shellcheck disable=SC2046
  build/ttq $(common "$path") --batch-size "$batch" --threads "$cores" -o "$out/one.pt" --log "$out/one.jsonl" >/dev/null
  one=$(throughput "$out/one.jsonl")
  port=$((29500 + RANDOM % 1000))
  pids=()
  for ((r = 0; r < ranks; r++)); do
    # shellcheck disable=SC2046
    build/ttq $(common "$path") --batch-size $((batch / ranks)) --threads $(((cores + ranks - 1) / ranks)) \
      --world-size "$ranks" --rank "$r" --master-port "$port" -o "$out/dist.pt" --log "$out/dist.jsonl" >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  dist=$(throughput "$out/dist.jsonl")
  awk -v m="$model" -v a="$one" -v b="$dist" -v r="$ranks" -v c="$cores" -v s="$steps" -v g="$batch" 'BEGIN {
    printf "%s, %d steps of %d samples: 1 process x %d threads %.0f samples/s; %d ranks x %d thread(s) %.0f samples/s; ratio %.3f\n",
      m, s, g, c, a, r, int((c + r - 1) / r), b, b / a }'
done
