#!/usr/bin/env bash
# Training-step benchmark; prints ratios measured in this one run:
#  - the TTQ step against the FP step of the same model in the same binary (target <= 1.05);
#  - ttq's TTQ step against the same TTQ loop in PyTorch Python eager (scripts/bench_python_ttq.py);
#  - 1 against 2 threads, which picks the default of --threads.
# Models: the CIFAR-style ResNet-20 (1x28x28) and the small CNN; data: Fashion-MNIST.
# Usage: scripts/bench_train.sh [STEPS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30}
scripts/setup.sh
cmake --build build --target ttq_bench_train >&2
out=out/bench_train
mkdir -p "$out"
/usr/bin/python3 scripts/make_resnet20.py "$out/resnet20.pt"
[[ -f $out/models/small_cnn.pt ]] || /usr/bin/python3 scripts/make_fixtures.py "$out/models" >&2
for model in resnet20 small_cnn; do
  path=$out/resnet20.pt; [[ $model == small_cnn ]] && path=$out/models/small_cnn.pt
  for threads in 1 2; do
    c=$(build/tests/ttq_bench_train "$path" "$steps" "$threads" 128)
    p=$(/usr/bin/python3 scripts/bench_python_ttq.py "$model" "$steps" "$threads" 128)
    echo "$c" | head -n 1
    echo "$p" | head -n 1
    awk -v c="$(echo "$c" | sed -n 's/ttq_ms_per_step=//p')" -v p="$(echo "$p" | sed -n 's/python_ms_per_step=//p')" \
      -v m="$model" -v t="$threads" 'BEGIN { printf "%s, %s thread(s): ttq TTQ step / Python eager TTQ step = %.3f (ttq %.2fx the throughput)\n", m, t, c / p, p / c }'
  done
done
