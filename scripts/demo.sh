#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job end to end: TTQ's claim on the embedded
# default data (Fashion-MNIST from Debian's dataset-fashion-mnist). A full-precision CNN is trained
# with `ttq finetune --fp`; `ttq finetune` turns it ternary; `ttq stats` checks and plots that run;
# `ttq export` packs the ternary model into a .ttqz archive and restores it, and writes it as a packed
# model that keeps its weights 2-bit in memory (and one on int8 activations with calibrated steps);
# PyTorch evaluates the FP model, the restored ternary one and the packed ones on the test set. Logs on stderr; the summary on stdout and in
# out/demo/summary.json. About three minutes after the build on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=out/demo
mkdir -p "$out"
/usr/bin/python3 scripts/make_fixtures.py "$out/models" >&2
ttq=build/ttq
step() { printf '\n== %s\n' "$*" >&2; }

step "1. train the full-precision CNN (3 epochs)"
$ttq finetune "$out/models/fashion_cnn.pt" --fp -o "$out/fashion_cnn.fp.pt" --optimizer adam --lr 0.001 \
  --epochs 3 --log "$out/fp.run.jsonl" >&2
$ttq inspect "$out/fashion_cnn.fp.pt" >&2

step "2. one-shot ternarization of the trained model, for contrast"
$ttq quantize "$out/fashion_cnn.fp.pt" -o "$out/fashion_cnn.oneshot.pt" -q >/dev/null
$ttq eval "$out/fashion_cnn.oneshot.pt" >&2

step "3. TTQ: train the ternary model from the FP one (3 epochs), check and plot the run"
$ttq finetune "$out/fashion_cnn.fp.pt" -o "$out/fashion_cnn.ttq.pt" --init mean --optimizer adam --lr 0.0005 \
  --epochs 3 --log "$out/ttq.run.jsonl" --log-every 100 >&2
$ttq stats "$out/ttq.run.jsonl" --plot "$out/ttq.run.svg" --expect 'top1>=0.88' --expect 'wp>0' --expect 'wn>0' >&2

step "4. pack the ternary model into a .ttqz archive, restore it as TorchScript; write it packed for inference"
$ttq export "$out/fashion_cnn.ttq.pt" -o "$out/fashion_cnn.ttqz" >&2
$ttq export "$out/fashion_cnn.ttqz" -o "$out/fashion_cnn.restored.pt" >&2
$ttq export "$out/fashion_cnn.ttq.pt" --format packed -o "$out/fashion_cnn.packed.pt" >&2
$ttq export "$out/fashion_cnn.ttq.pt" --format packed --activations int8 -o "$out/fashion_cnn.int8.pt" \
  --calibrate fashion-mnist:/usr/share/datasets/fashion-mnist >&2

step "5. PyTorch evaluates the FP model, the restored ternary model and the packed one on all test images"
/usr/bin/python3 scripts/demo_summary.py --fp "$out/fashion_cnn.fp.pt" --ternary "$out/fashion_cnn.restored.pt" \
  --ttqz "$out/fashion_cnn.ttqz" --one-shot "$out/fashion_cnn.oneshot.pt" --packed "$out/fashion_cnn.packed.pt" \
  --packed-int8 "$out/fashion_cnn.int8.pt" --ops build/plugins/libttq_ops.so --json "$out/summary.json"
