#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job end to end: script models with PyTorch,
# ternarize them with `ttq quantize`, `ttq inspect` the result, pack it into a .ttqz archive and
# restore it with `ttq export`, and run the ternary model in PyTorch
# on real Fashion-MNIST images (the embedded default data). Outputs go to out/demo/.
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
