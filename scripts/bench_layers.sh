#!/usr/bin/env bash
# ttq's int8 convolutions layer by layer against PyTorch's quantized ones (torch.ao.nn.quantized
# Conv2d, the quantized engine Debian's PyTorch has: onednn), in one process, side by side: the
# shapes of ResNet-18's 3x3 layers and of MobileNetV2's narrow 1x1 and depthwise ones, uint8 in and
# out (ttq: the bytes a chained layer stores, a BatchNorm's affine and a ReLU6 folded in; PyTorch:
# quint8 on the same steps), channels-last. Prints each layer's best quarter time and the ratio.
# Usage: scripts/bench_layers.sh [BATCH [THREADS [avx2]]]   (defaults 16, one per core)
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-16}; threads=${2:-$(nproc)}
if [[ ${3:-} == avx2 ]]; then
  export TTQ_KERNEL=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2
fi
scripts/setup.sh
/usr/bin/python3 - "$batch" "$threads" <<'PY'
import sys, time, torch
import torch.ao.nn.quantized as nnq
batch, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.ops.load_library("build/plugins/libttq_ops.so")
torch.backends.quantized.engine = "onednn"
g = torch.Generator().manual_seed(0)
def best_quarter(f, n=30):
    for _ in range(3):
        f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 4] * 1000
print(f"batch {batch}, {threads} thread(s), ttq kernel path: {torch.ops.ttq.kernel()}")
# (name, in, out, kernel, stride, groups, size)
for name, cin, cout, k, s, groups, size in [
        ("ResNet-18 3x3 64 @56", 64, 64, 3, 1, 1, 56), ("ResNet-18 3x3 128 @28", 128, 128, 3, 1, 1, 28),
        ("ResNet-18 3x3 256 @14", 256, 256, 3, 1, 1, 14), ("ResNet-18 3x3 512 @7", 512, 512, 3, 1, 1, 7),
        ("MobileNetV2 1x1 16->96 @112", 16, 96, 1, 1, 1, 112), ("MobileNetV2 dw 96 s2 @112", 96, 96, 3, 2, 96, 112),
        ("MobileNetV2 dw 32 @112", 32, 32, 3, 1, 32, 112), ("MobileNetV2 dw 144 @56", 144, 144, 3, 1, 144, 56),
        ("MobileNetV2 1x1 144->24 @56", 144, 24, 1, 1, 1, 56), ("MobileNetV2 1x1 24->144 @56", 24, 144, 1, 1, 1, 56),
        ("MobileNetV2 dw 384 @14", 384, 384, 3, 1, 384, 14), ("MobileNetV2 1x1 64->384 @14", 64, 384, 1, 1, 1, 14)]:
    pad, shape = k // 2, [cout, cin // groups, k, k]
    w = torch.randint(-1, 2, (cout, k, k, cin // groups), generator=g).float() * 0.3  # tap-major codes
    codes, scales = torch.ops.ttq.pack(w, 0.3, 0.3)
    x = torch.randn(batch, cin, size, size, generator=g).clamp_min(0).contiguous(memory_format=torch.channels_last)
    x_bytes = (torch.round(x / 0.03).clamp(-127, 127) + 128).to(torch.uint8)
    affine = torch.stack([torch.rand(cout, generator=g) + 0.5, torch.randn(cout, generator=g)])
    ttq = lambda: torch.ops.ttq.conv2d_int8(  # noqa: E731
        x_bytes, codes, scales, shape, None, [s, s], [pad, pad], [1, 1], groups, torch.tensor([0.03]), affine,
        torch.tensor([0.05]), None, None, torch.tensor([0.0, 6.0]))
    conv = nnq.Conv2d(cin, cout, k, s, pad, groups=groups)
    q_weight = torch.quantize_per_channel(w.permute(0, 3, 1, 2).contiguous(), torch.full((cout,), 0.3 / 127),
                                          torch.zeros(cout, dtype=torch.long), 0, torch.qint8)
    conv.set_weight_bias(q_weight, torch.zeros(cout))
    conv.scale, conv.zero_point = 0.05, 0
    x_q = torch.quantize_per_tensor(x, 0.03, 0, torch.quint8)
    pytorch = lambda: conv(x_q)  # noqa: E731
    a = min(best_quarter(ttq), best_quarter(ttq))
    b = min(best_quarter(pytorch), best_quarter(pytorch))
    print(f"{name:<28} ttq {a:7.3f} ms  pytorch {b:7.3f} ms  = {b / a:4.2f}x the speed")
PY
