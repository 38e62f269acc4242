#!/usr/bin/env bash
# Training-step benchmark; prints ratios measured in this one run:
#  - the TTQ step against the FP step of the same model in the same binary (target <= 1.05);
#  - ttq's TTQ step against the same TTQ loop in PyTorch Python eager (scripts/bench_python_ttq.py),
#    in float32, and with --precision bf16 against Python's bf16 autocast with channels-last (the
#    Python user at their best on this CPU);
#  - ttq bf16 against ttq float32 (issue target: at least 2x on the ResNet-20);
#  - 1 against 2 threads, which picks the default of --threads;
#  - ttq's BatchNorm kernels (core/batch_norm.cpp) against LibTorch's, which TTQ_KERNEL=avx2 puts
#    back (the ResNet-20, 2 threads, both precisions);
#  - channels-last against contiguous (the ResNet-20, 2 threads, both precisions), which decides
#    --memory-format auto (core/precision.cpp);
#  - the Python step again with glibc's thresholds as ttq sets them (which a Python user can set);
#  - the ResNet-20's convolutions alone (PyTorch's oneDNN kernels, which ttq's steps call, forward and
#    backward, channels-last) in both precisions against ttq's steps: how far bf16 can go at all.
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
ms() { sed -n "s/$1=//p"; }
for model in resnet20 small_cnn; do
  path=$out/resnet20.pt; [[ $model == small_cnn ]] && path=$out/models/small_cnn.pt
  for threads in 1 2; do
    declare -A c p
    for precision in fp32 bf16; do
      c[$precision]=$(build/tests/ttq_bench_train "$path" "$steps" "$threads" 128 "$precision")
      p[$precision]=$(/usr/bin/python3 scripts/bench_python_ttq.py "$model" "$steps" "$threads" 128 "$precision")
      echo "${c[$precision]}" | head -n 1
      echo "${p[$precision]}" | head -n 1
      awk -v c="$(echo "${c[$precision]}" | ms ttq_ms_per_step)" -v p="$(echo "${p[$precision]}" | ms python_ms_per_step)" \
        -v m="$model" -v t="$threads" -v x="$precision" \
        'BEGIN { printf "%s, %s thread(s), %s: ttq TTQ step / Python eager TTQ step = %.3f (ttq %.2fx the throughput)\n", m, t, x, c / p, p / c }'
    done
    awk -v a="$(echo "${c[fp32]}" | ms ttq_ms_per_step)" -v b="$(echo "${c[bf16]}" | ms ttq_ms_per_step)" -v m="$model" -v t="$threads" \
      'BEGIN { printf "%s, %s thread(s): ttq bf16 %.2fx the throughput of ttq fp32\n", m, t, a / b }'
  done
done
for precision in fp32 bf16; do
  ours=$(build/tests/ttq_bench_train "$out/resnet20.pt" "$steps" 2 128 "$precision" | ms ttq_ms_per_step)
  theirs=$(TTQ_KERNEL=avx2 build/tests/ttq_bench_train "$out/resnet20.pt" "$steps" 2 128 "$precision" | ms ttq_ms_per_step)
  awk -v a="$ours" -v b="$theirs" -v x="$precision" \
    'BEGIN { printf "resnet20, 2 thread(s), %s: TTQ step %.2f ms with ttq'"'"'s BatchNorm kernels, %.2f ms with LibTorch'"'"'s (%.2fx)\n", x, a, b, b / a }'
done
for precision in fp32 bf16; do
  nhwc=$(build/tests/ttq_bench_train "$out/resnet20.pt" "$steps" 2 128 "$precision" channels-last | ms ttq_ms_per_step)
  nchw=$(build/tests/ttq_bench_train "$out/resnet20.pt" "$steps" 2 128 "$precision" contiguous | ms ttq_ms_per_step)
  awk -v a="$nhwc" -v b="$nchw" -v x="$precision" \
    'BEGIN { printf "resnet20, 2 thread(s), %s: TTQ step %.2f ms channels-last, %.2f ms contiguous (%.2fx)\n", x, a, b, b / a }'
done
# glibc's thresholds as ttq's main sets them (keep_freed_memory_for_reuse): with the defaults, fresh
# pages for each 6 MiB activation made a process's first layers 4-25x slower, now and then.
as_ttq=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456)
declare -A step convolutions
for precision in fp32 bf16; do
  step[$precision]=$(build/tests/ttq_bench_train "$out/resnet20.pt" "$steps" 2 128 "$precision" | ms ttq_ms_per_step)
  eager=$("${as_ttq[@]}" /usr/bin/python3 scripts/bench_python_ttq.py resnet20 "$steps" 2 128 "$precision" | ms python_ms_per_step)
  convolutions[$precision]=$("${as_ttq[@]}" /usr/bin/python3 scripts/bench_python_ttq.py resnet20 "$steps" 2 128 \
    "$precision-convolutions" | ms python_ms_per_step)
  awk -v a="${step[$precision]}" -v b="$eager" -v x="$precision" \
    'BEGIN { printf "resnet20, 2 thread(s), %s: TTQ step %.2f ms, Python eager with ttq'"'"'s malloc thresholds %.2f ms (ttq %.2fx the throughput)\n", x, a, b, b / a }'
done
awk -v f="${step[fp32]}" -v b="${step[bf16]}" -v cf="${convolutions[fp32]}" -v cb="${convolutions[bf16]}" 'BEGIN {
  printf "resnet20, 2 thread(s): convolutions alone %.2f ms fp32, %.2f ms bf16 (%.2fx); of ttq'"'"'s steps (%.2f and %.2f ms) they are %.0f%% and %.0f%%\n", cf, cb, cf / cb, f, b, 100 * cf / f, 100 * cb / b
  printf "resnet20, 2 thread(s): ttq bf16 %.2fx ttq fp32; with every op but the convolutions free, bf16 would be at most %.2fx\n", f / b, f / cb }'
