#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job end to end: script models with PyTorch,
# ternarize them with `ttq quantize`, train the small CNN with `ttq finetune` on Fashion-MNIST (the
# embedded default data), check and plot its run with `ttq stats`, `ttq inspect` the results, pack
# them into .ttqz archives and restore them with `ttq export`, and run the ternary models in PyTorch
# on real Fashion-MNIST test images. Outputs go to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=out/demo
mkdir -p "$out"
/usr/bin/python3 scripts/make_fixtures.py "$out/models" >&2
set -x
build/ttq quantize "$out/models/resnet18.pt" -o "$out/resnet18.ttq.pt"
build/ttq inspect "$out/resnet18.ttq.pt" --json > "$out/resnet18.inspect.json"
build/ttq export "$out/resnet18.ttq.pt" -o "$out/resnet18.ttqz"
build/ttq export "$out/resnet18.ttqz" -o "$out/resnet18.restored.pt"
build/ttq quantize "$out/models/small_cnn.pt" -o "$out/small_cnn.ttq.pt" --sparsity 0.5
build/ttq inspect "$out/small_cnn.ttq.pt"
build/ttq export "$out/small_cnn.ttq.pt" -o "$out/small_cnn.ttqz"
build/ttq export "$out/small_cnn.ttqz" -o "$out/small_cnn.restored.pt"
/usr/bin/python3 scripts/run_on_fashion_mnist.py "$out/small_cnn.restored.pt" "$out/models/small_cnn.pt"
build/ttq finetune "$out/models/small_cnn.pt" -o "$out/small_cnn.ft.pt" --init mean --optimizer adam --lr 0.002 \
  --epochs 3 --log "$out/small_cnn.run.jsonl" --log-every 50
build/ttq stats "$out/small_cnn.run.jsonl" --plot "$out/small_cnn.run.svg" --expect 'top1>=0.8' --expect 'wp>0' \
  --expect 'wn>0'
build/ttq inspect "$out/small_cnn.ft.pt"
build/ttq export "$out/small_cnn.ft.pt" -o "$out/small_cnn.ft.ttqz"
build/ttq export "$out/small_cnn.ft.ttqz" -o "$out/small_cnn.ft.restored.pt"
/usr/bin/python3 scripts/run_on_fashion_mnist.py "$out/small_cnn.ft.restored.pt" "$out/models/small_cnn.pt"
