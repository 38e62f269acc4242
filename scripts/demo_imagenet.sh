#!/usr/bin/env bash
# The ImageNet-layout job end to end, small: torchvision's ResNet-18 (10 classes) trained with TTQ
# for a few hundred steps (10 epochs of 31) on a generated folder DIR/train/<class>/*.JPEG, DIR/val/<class>/*.JPEG
# (500x375 JPEGs, some grayscale, some CMYK, some PNG), decoded per batch with random resized crops,
# then `ttq eval` on val/. Fails when the ternary model does not learn the classes (val top-1 below
# 90%; chance is 10%; measured 100%). About two minutes on two cores.
# Usage: scripts/demo_imagenet.sh [EPOCHS [SIZE]]   (defaults 10 and 64)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-10}; size=${2:-64}
scripts/setup.sh
out=out/demo_imagenet
mkdir -p "$out"
[[ -f $out/imagenet/.done ]] || {
  rm -rf "$out/imagenet"
  /usr/bin/python3 scripts/make_image_folder.py "$out/imagenet" --classes 10 --train 100 --val 20 --size 500x375 \
    --png --gray --cmyk
  touch "$out/imagenet/.done"
}
/usr/bin/python3 -c "import sys, torch, torchvision
torch.manual_seed(0)
torch.jit.save(torch.jit.script(torchvision.models.resnet18(num_classes=10)), sys.argv[1])" "$out/resnet18.pt"
ttq=build/ttq
$ttq finetune "$out/resnet18.pt" -o "$out/resnet18.ttq.pt" --data "imagefolder:$out/imagenet" --image-size "$size" \
  --batch-size 32 --epochs "$epochs" --optimizer adam --lr 0.002 --log "$out/run.jsonl" \
  --log-every 25 --progress >&2
$ttq eval "$out/resnet18.ttq.pt" --data "imagefolder:$out/imagenet" --image-size "$size" --json | tee "$out/eval.json"
$ttq stats "$out/run.jsonl" --expect 'top1>=0.9' --expect 'wp>0' --expect 'wn>0' >&2
