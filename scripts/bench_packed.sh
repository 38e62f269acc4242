#!/usr/bin/env bash
# Packed ternary models against their float32 originals and against PyTorch's dynamic int8
# quantization (torch.ao.quantization.quantize_dynamic) of the same network, measured side by side
# in one run with `ttq bench` (runs alternated; memory in a fresh process per model): latency,
# resident memory once loaded and after a run, file size. Networks (batch 1 unless said):
#  - one 4096x4096 linear layer, batch 1 and 64 (targets: float >= 2.5x, int8 >= 5x faster at
#    batch 1; float no slower at 64);
#  - a 3-layer MLP 4096 wide and nn.TransformerEncoder (d=1024, 4 layers, sequence 32) (targets:
#    int8 >= 3x faster than FP32 and faster than quantize_dynamic, >= 4x less weight memory than it
#    (the tensors each file holds);
#    MLP memory >= 10x less than FP32, also after a run);
#  - torchvision's ResNet-18 at 224x224 (targets: float at least as fast as FP32, also at batch 16
#    and channels-last, int8 >= 1.5x
#    faster, >= 10x less memory once loaded, the file >= 12x smaller); with the paper's first/last
#    rule (the first convolution and the 1000-class fc, 2 MiB, stay float32), with every layer
#    ternary (resnet18_all), and with the rule and a 10-class fc (resnet18_10, as the demos
#    fine-tune it); for resnet18 and resnet18_10 also int8 with static steps (export --calibrate,
#    on 32 random images) against dynamic int8, float32 and PyTorch's own static int8 model
#    (prepare_fx/convert_fx, calibrated on the same images, frozen), at batch 1 and 16, with
#    channels-last images (targets: at least as fast as PyTorch's static int8, with at least 3.5x less
#    weight memory: "tensors"), and against the float32 model run eagerly with bf16 autocast;
#  - torchvision's MobileNetV2 (the rule keeps its first convolution and classifier float32): the
#    same static int8 arms; and with its classifier ternary too (mobilenet_v2_q, --quantize-last)
#    against the same static model, as the classifier is 37% of its weights;
#  - torchvision's ResNeXt-50 32x4d (grouped 3x3 convolutions): float against FP32, calibrated int8
#    against float (batch 1 and 16) and against PyTorch's static int8 (batch 1).
# The float32 side is the ternary model with float32 weights: the same arithmetic as the FP32 model.
# Usage: scripts/bench_packed.sh [RUNS [THREADS [avx2]]]   (defaults 20, one per core)
# With avx2, an AVX2-only machine as far as one can be simulated on a newer one: ttq's AVX2 kernels
# (TTQ_KERNEL), oneDNN and OpenBLAS limited to AVX2 for the float32 and quantize_dynamic models.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}; threads=${2:-$(nproc)}
if [[ ${3:-} == avx2 ]]; then
  export TTQ_KERNEL=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell
fi
scripts/setup.sh
out=out/bench_packed
mkdir -p "$out"
/usr/bin/python3 - "$out" <<'PY'
import sys, torch, torch.nn as nn, torchvision
from torch.ao.quantization import quantize_dynamic
out = sys.argv[1]
torch.manual_seed(0)
torch.backends.quantized.engine = "onednn" if "fbgemm" not in torch.backends.quantized.supported_engines else "fbgemm"
# Calibration images for both static int8 models: ttq's (export --calibrate) and PyTorch's own.
calibration = torch.randn(32, 3, 224, 224)
torch.save({"x": calibration, "x_test": calibration[:1]}, f"{out}/calibration.pt")
def save_static(m, name):  # PyTorch's static int8 (FX graph mode), calibrated on the same images, frozen
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    prepared = prepare_fx(m, get_default_qconfig_mapping(torch.backends.quantized.engine), (calibration[:1],))
    with torch.no_grad():
        for batch in calibration.split(8):
            prepared(batch)
    torch.jit.save(torch.jit.freeze(torch.jit.script(convert_fx(prepared))), f"{out}/{name}.static.pt")
def save(m, name, example):
    m = m.eval()
    torch.jit.save(torch.jit.script(m), f"{out}/{name}.pt")
    if name.startswith(("resnet18", "mobilenet", "resnext")):  # dynamic quantization covers linear layers only
        save_static(m, name)
        return
    # Traced in training mode: PyTorch 1.13's eval-mode TransformerEncoderLayer fails with dynamically
    # quantized linears (its fast-path check reads linear1.weight, a method there); with dropout 0
    # training mode computes the same function.
    q = quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8).train()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(q, example), f"{out}/{name}.dynamic.pt")
save(nn.Sequential(nn.Linear(4096, 4096)), "linear4096", torch.randn(1, 4096))
save(nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096)), "mlp4096",
     torch.randn(1, 4096))
layer = nn.TransformerEncoderLayer(1024, 16, 4096, dropout=0.0, batch_first=True)
save(nn.Sequential(nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)), "encoder1024", torch.randn(1, 32, 1024))
save(torchvision.models.resnet18(), "resnet18", None)
save(torchvision.models.resnet18(num_classes=10), "resnet18_10", None)
# MobileNetV2 with BatchNorm statistics of the calibration images, as a trained model has: with its
# initial ones activations vanish after a few blocks, and PyTorch's static int8 model (onednn) then
# fails at batch 16 ("could not create a primitive descriptor for a reorder primitive").
def with_statistics(m):  # BatchNorm statistics of the calibration images
    m.train()
    for module in m.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average
    with torch.no_grad():
        for batch in calibration.split(8):
            m(batch)
    return m
save(with_statistics(torchvision.models.mobilenet_v2()), "mobilenet_v2", None)
save(with_statistics(torchvision.models.resnext50_32x4d()), "resnext50", None)
PY
prepare() {  # NAME [QUANTIZE FLAGS...]: the ternary model and its packed forms
  local name=$1; shift
  build/ttq quantize "$out/$name.pt" -o "$out/$name.ttq.pt" -q "$@" >/dev/null
  build/ttq export "$out/$name.ttq.pt" --format packed -o "$out/$name.float.pt" >/dev/null
  build/ttq export "$out/$name.ttq.pt" --format packed --activations int8 -o "$out/$name.int8.pt" >/dev/null
}
compare() {  # NAME SHAPE BATCH A B [FORMAT]: model files $out/NAME.A.pt against $out/NAME.B.pt, images in
  local name=$1 shape=$2 batch=$3 a=$4 b=$5 format=${6:-contiguous}  # FORMAT (bench --memory-format)
  build/ttq bench "$out/$name.$a.pt" --vs "$out/$name.$b.pt" --input-shape "$shape" --batch-size "$batch" \
    --runs "$runs" --threads "$threads" --memory-format "$format" --json > "$out/$name.$a.$b.$batch.json"
  /usr/bin/python3 - "$out" "$name" "$batch" "$a" "$b" "$format" <<'PY'
import json, os, sys, zipfile
out, name, batch, a, b, format = sys.argv[1:]
doc = json.load(open(f"{out}/{name}.{a}.{b}.{batch}.json"))
ma, mb = doc["models"]
size = os.path.getsize(f"{out}/{name}.{b}.pt") / os.path.getsize(f"{out}/{name}.{a}.pt")
def weight_mib(path):  # the tensors a TorchScript file holds (its data/ records): the weights in memory
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if "/data/" in i.filename or "/constants/" in i.filename) / 2**20
wa, wb = weight_mib(f"{out}/{name}.{a}.pt"), weight_mib(f"{out}/{name}.{b}.pt")
label = {"float": "packed", "int8": "packed-int8", "int8s": "packed-int8-calibrated", "ttq": "float32",
         "dynamic": "dynamic-int8", "static": "pytorch-static-int8"}
if format == "channels-last":
    name += " NHWC"
print(f"{name:<13} b{batch:<2} {label[a]:>11} vs {label[b]:<12}: {ma['median_ms']:8.3f} vs {mb['median_ms']:8.3f} ms "
      f"= {doc['speedup']:5.2f}x the speed; loaded {ma['loaded_mib']:6.1f} vs {mb['loaded_mib']:6.1f} MiB "
      f"({doc['memory_ratio']:4.1f}x less), after a run {ma['after_run_mib']:6.1f} vs {mb['after_run_mib']:6.1f} MiB, "
      f"peak {ma['peak_mib']:6.1f} vs {mb['peak_mib']:6.1f} MiB; tensors {wa:6.1f} vs {wb:6.1f} MiB ({wb / wa:4.1f}x less); "
      f"file {size:4.1f}x smaller")
PY
}
echo "ttq bench, $runs runs, $threads thread(s), kernel path: $(/usr/bin/python3 -c "import torch; torch.ops.load_library('build/plugins/libttq_ops.so'); print(torch.ops.ttq.kernel())")"
prepare linear4096 --quantize-first --quantize-last
compare linear4096 4096 1 float ttq
compare linear4096 4096 1 int8 ttq
compare linear4096 4096 64 float ttq
compare linear4096 4096 64 int8 ttq
for name in mlp4096 encoder1024; do
  shape=4096; [[ $name == encoder1024 ]] && shape=32,1024
  prepare "$name" --quantize-first --quantize-last
  compare "$name" "$shape" 1 float ttq
  compare "$name" "$shape" 1 int8 ttq
  compare "$name" "$shape" 1 int8 dynamic
done
# ResNet-18's static int8 arms: ttq's steps calibrated on the same images as PyTorch's model, images
# channels-last (NHWC) as both run best.
calibrated() {  # NAME: $out/NAME.int8s.pt, its steps calibrated on the static model's images
  build/ttq export "$out/$1.ttq.pt" --format packed --activations int8 -o "$out/$1.int8s.pt" \
    --calibrate "tensors:$out/calibration.pt" >/dev/null
}
static_arms() {  # NAME
  calibrated "$1"
  compare "$1" 3,224,224 1 int8s int8 channels-last
  compare "$1" 3,224,224 1 int8s ttq channels-last
  compare "$1" 3,224,224 1 int8s static channels-last
  compare "$1" 3,224,224 16 int8s static channels-last
  bf16_arm "$1" 1
  bf16_arm "$1" 16
}
# The float32 model as a Python user runs it at their best without int8: eager, bf16 autocast,
# channels-last (bf16 only where the CPU has it natively, else float32), against ttq's calibrated
# int8 model, alternated in one process with ttq's malloc settings.
bf16_arm() {  # NAME BATCH
  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456 \
  /usr/bin/python3 - "$out" "$1" "$2" "$runs" "$threads" <<'PY'
import os, sys, time, torch, torchvision
out, name, batch, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.ops.load_library("build/plugins/libttq_ops.so")
scripted = torch.jit.load(f"{out}/{name}.pt")
build = {"resnet18": torchvision.models.resnet18, "resnet18_10": lambda: torchvision.models.resnet18(num_classes=10),
         "mobilenet_v2": torchvision.models.mobilenet_v2}[name]
eager = build().eval()
eager.load_state_dict(scripted.state_dict())
eager = eager.to(memory_format=torch.channels_last)
# Native bf16 (AVX-512 BF16), unless an AVX2-only machine is simulated (oneDNN limited to AVX2).
bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() and os.environ.get("TTQ_KERNEL") != "avx2"
ttq = torch.jit.load(f"{out}/{name}.int8s.pt")
x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
def eager_run():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        eager(x)
times = {"ttq": [], "eager": []}
with torch.no_grad():
    for _ in range(3):
        ttq(x), eager_run()
    for _ in range(runs):
        for arm, run in (("ttq", lambda: ttq(x)), ("eager", eager_run)):
            start = time.perf_counter()
            run()
            times[arm].append(1000 * (time.perf_counter() - start))
median = {arm: sorted(t)[len(t) // 2] for arm, t in times.items()}
label = "eager bf16 autocast" if bf16 else "eager float32 (no native bf16)"
print(f"{name + ' NHWC':<13} b{batch:<2} packed-int8-calibrated vs {label}: {median['ttq']:8.3f} vs "
      f"{median['eager']:8.3f} ms = {median['eager'] / median['ttq']:5.2f}x the speed")
PY
}
prepare resnet18
compare resnet18 3,224,224 1 float ttq
compare resnet18 3,224,224 1 float ttq channels-last
compare resnet18 3,224,224 16 float ttq
compare resnet18 3,224,224 1 int8 ttq
static_arms resnet18
cp "$out/resnet18.pt" "$out/resnet18_all.pt"
prepare resnet18_all --quantize-first --quantize-last
compare resnet18_all 3,224,224 1 float ttq
compare resnet18_all 3,224,224 1 int8 ttq
prepare resnet18_10
compare resnet18_10 3,224,224 1 float ttq
compare resnet18_10 3,224,224 1 int8 ttq
static_arms resnet18_10
prepare mobilenet_v2
compare mobilenet_v2 3,224,224 1 float ttq
static_arms mobilenet_v2
# MobileNetV2's classifier is 37% of its weights, and PyTorch's static model holds it in 8 bits as
# ttq does by the paper's rule: 3.5x less weight memory takes it ternary too (--quantize-last).
cp "$out/mobilenet_v2.pt" "$out/mobilenet_v2_q.pt"
cp "$out/mobilenet_v2.static.pt" "$out/mobilenet_v2_q.static.pt"
prepare mobilenet_v2_q --quantize-last
calibrated mobilenet_v2_q
compare mobilenet_v2_q 3,224,224 1 int8s static channels-last
compare mobilenet_v2_q 3,224,224 16 int8s static channels-last
# ResNeXt-50 (32x4d): its 3x3 convolutions grouped, 4 to 32 channels a group, int8 on the dense
# kernels a block of groups at a time.
prepare resnext50
calibrated resnext50
compare resnext50 3,224,224 1 float ttq channels-last
compare resnext50 3,224,224 1 int8s float channels-last
compare resnext50 3,224,224 1 int8s static channels-last
# Not at batch 16: there PyTorch 1.13's static model (onednn) fails from its second call, in layer4's
# first grouped convolution ("Trying to create tensor with negative dimension -7: [16, 32, -7, 7]").
compare resnext50 3,224,224 16 int8s float channels-last
