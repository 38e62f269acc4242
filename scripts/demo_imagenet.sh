#!/usr/bin/env bash
# The ImageNet-layout job end to end, small: torchvision's ResNet-18 (10 classes) trained with TTQ
# for a few hundred steps (10 epochs of 31) on a generated folder DIR/train/<class>/*.JPEG, DIR/val/<class>/*.JPEG
# (500x375 JPEGs, some grayscale, some CMYK, some PNG), decoded per batch with random resized crops,
# then `ttq eval` on val/. Fails when the ternary model does not learn the classes (val top-1 below
# 90%; chance is 10%; measured 100%), or when the model packed with int8 activations (its 19
# ternary convolutions on int8 inputs), per call or with static steps calibrated on train/ at the
# same size (bytes from layer to layer and block to block), predicts another class than the float
# path for more than 1% of the val/ images, as PyTorch loads and runs them. About three minutes on
# two cores.
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
$ttq export "$out/resnet18.ttq.pt" --format packed -o "$out/resnet18.packed.pt" >&2
$ttq export "$out/resnet18.ttq.pt" --format packed --activations int8 -o "$out/resnet18.int8.pt" >&2
$ttq export "$out/resnet18.ttq.pt" --format packed --activations int8 -o "$out/resnet18.int8s.pt" \
  --calibrate "imagefolder:$out/imagenet" --image-size "$size" --calibrate-samples 256 >&2
/usr/bin/python3 - "$out" "$size" <<'PY'
import sys, torch, torchvision.transforms as T
from torchvision.datasets import ImageFolder
out, size = sys.argv[1], int(sys.argv[2])
torch.ops.load_library("build/plugins/libttq_ops.so")
val = ImageFolder(f"{out}/imagenet/val", T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), T.ToTensor(),
                                                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]))
x = torch.stack([image for image, _ in val])
with torch.no_grad():
    exact, int8, static = (torch.jit.load(f"{out}/resnet18.{kind}.pt").eval()(x).argmax(1)
                           for kind in ("packed", "int8", "int8s"))
agree = [(exact == int8).float().mean().item(), (exact == static).float().mean().item()]
print(f"int8 activations agree with the float path on {agree[0]:.1%} of {len(val)} val images, "
      f"calibrated on {agree[1]:.1%}", file=sys.stderr)
sys.exit(0 if min(agree) >= 0.99 else 1)
PY
