#!/usr/bin/env bash
# Image folder loading benchmark; prints figures measured side by side in this one run:
#  - training batches (RandomResizedCrop, flip, normalization) per second from a folder of
#    ImageNet-sized JPEGs (500x375, generated), ttq's loader against torchvision's ImageFolder and
#    DataLoader with PIL and the same number of workers, at 224 and at 64 pixels (goals: >= 1.2x and
#    >= 2x, the latter from decoding at 1/2 to 1/8 in the DCT domain);
#  - peak resident memory of one `ttq finetune` epoch (a small CNN at 64 pixels) on 2,000 and on
#    8,000 of those images: it must not grow with the dataset.
# Usage: scripts/bench_loader.sh [IMAGES [WORKERS]]   (defaults: 1000 timed images, one worker per core)
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-1000}; workers=${2:-$(nproc)}
scripts/setup.sh
cmake --build build --target ttq_bench_loader ttq >&2
out=out/bench_loader
mkdir -p "$out"
if [[ ! -f $out/large/.done ]]; then
  rm -rf "$out/large"
  /usr/bin/python3 scripts/make_image_folder.py "$out/large" --classes 10 --train 800 --flat --size 500x375
  touch "$out/large/.done"
fi
rm -rf "$out/small"
for k in $(seq 0 9); do  # the first 200 of each class, as links
  mkdir -p "$out/small/class$k"
  files=("$out/large/class$k"/*)
  for f in "${files[@]:0:200}"; do ln -s "$PWD/$f" "$out/small/class$k/"; done
done

for size in 224 64; do
  t=$(build/tests/ttq_bench_loader "$out/small" "$size" "$workers" 64 "$images" | sed -n 's/ttq_images_per_second=//p')
  p=$(/usr/bin/python3 - "$out/small" "$size" "$workers" 64 "$images" <<'PY'
import sys, time, torch
import torchvision.transforms as T
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
folder, size, workers, batch, images = sys.argv[1], *map(int, sys.argv[2:])
transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                       T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
loader = DataLoader(ImageFolder(folder, transform), batch_size=batch, shuffle=True, num_workers=workers,
                    persistent_workers=True)
batches = iter(loader)
next(batches)  # warm-up: starts the workers
start, done = time.perf_counter(), 0
while done < images:
    try:
        done += next(batches)[0].shape[0]
    except StopIteration:
        batches = iter(loader)
print(f"{done / (time.perf_counter() - start):.1f}")
PY
)
  awk -v t="$t" -v p="$p" -v s="$size" -v w="$workers" \
    'BEGIN { printf "%d px, %d workers: ttq %.0f images/s, torchvision DataLoader + PIL %.0f images/s: ttq %.2fx\n", s, w, t, p, t / p }'
done

/usr/bin/python3 - "$out/rgb_net.pt" <<'PY'
import sys, torch, torch.nn as nn
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
torch.jit.save(torch.jit.script(net), sys.argv[1])
PY
for set in small large; do
  n=$(find -L "$out/$set" -name '*.JPEG' | wc -l)
  kib=$( { /usr/bin/time -f '%M' build/ttq finetune "$out/rgb_net.pt" -o "$out/m.pt" --data "imagefolder:$out/$set" \
    --image-size 64 --batch-size 64 --epochs 1 --init mean --no-progress --quiet 2>&1 >/dev/null; } | tail -n 1)
  echo "$n images: peak RSS of finetune (1 epoch, 64 px) $((kib / 1024)) MiB"
done
