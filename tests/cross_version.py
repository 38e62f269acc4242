#!/usr/bin/env python3
"""Files written by one LibTorch line of ttq, read by the other (tests/cross_version.sh runs both).

cross_version.py write TTQ DIR   fixtures scripted by this PyTorch, quantized, archived and packed by
                                 this line's ttq, into DIR
cross_version.py read TTQ DIR    this line's ttq and PyTorch read the files the other line wrote in
                                 DIR: archives restore bit-exactly, packed models unpack bit-exactly,
                                 and a model calling an operator this LibTorch lacks is refused in
                                 one line naming it
Prints one line per check and 'cross-version: N passed, N failed'; exits 1 on a failure.
"""
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import make_fixtures  # noqa: E402

# Models whose operators both lines have (torchvision CNNs, small custom nets).
COMMON = ["resnet18", "small_cnn"]
# A transformer: PyTorch 2.x scripts it with aten::scaled_dot_product_attention, which 1.13 lacks.
TRANSFORMER = "text_classifier"


def run(ttq, *args):
    return subprocess.run([ttq, *args], capture_output=True, text=True)


def write(ttq, out):
    torch.manual_seed(0)
    models = {"resnet18": make_fixtures.torchvision.models.resnet18(num_classes=10),
              "small_cnn": make_fixtures.SmallCNN(), TRANSFORMER: make_fixtures.TextClassifier()}
    for name, model in models.items():
        make_fixtures.save_scripted(model, os.path.join(out, name + ".pt"))
        p = os.path.join(out, name)
        for args in (["quantize", p + ".pt", "-o", p + ".ttq.pt", "-q"], ["export", p + ".ttq.pt", "-o", p + ".ttqz"],
                     ["export", p + ".ttq.pt", "--format", "packed", "-o", p + ".packed.pt"]):
            r = run(ttq, *args)
            if r.returncode != 0:
                sys.exit(f"cross_version.py: ttq {' '.join(args)} failed: {r.stderr.strip()}")
    with open(os.path.join(out, "torch_version"), "w") as f:
        f.write(torch.__version__)
    print(f"cross_version.py: PyTorch {torch.__version__} wrote {', '.join(models)} to {out}")


def tensors(path):
    m = torch.jit.load(path)
    return {**dict(m.named_parameters()), **dict(m.named_buffers())}


def same_tensors(a, b):
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def read(ttq, out):
    writer = open(os.path.join(out, "torch_version")).read()
    results = []

    def check(what, ok, detail=""):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail and not ok else ''}")

    for name in COMMON:
        p = os.path.join(out, name)
        restored = os.path.join(out, f"{name}.restored-by-{torch.__version__}.pt")
        r = run(ttq, "export", p + ".ttqz", "-o", restored)
        check(f"{name}.ttqz from PyTorch {writer} restores", r.returncode == 0, r.stderr.strip())
        if r.returncode == 0:
            check(f"{name}: restored tensors equal the {writer} ternary model's bit for bit",
                  same_tensors(restored, p + ".ttq.pt"))
        back = os.path.join(out, f"{name}.unpacked-by-{torch.__version__}.pt")
        r = run(ttq, "export", p + ".packed.pt", "--format", "ttq", "-o", back)
        check(f"{name}.packed.pt from PyTorch {writer} unpacks", r.returncode == 0, r.stderr.strip())
        if r.returncode == 0:
            check(f"{name}: unpacked tensors equal the ternary model's bit for bit", same_tensors(back, p + ".ttq.pt"))
        # This PyTorch, with this line's operators, runs the other line's packed model as its ternary one.
        torch.ops.load_library(os.path.join(os.path.dirname(ttq), "plugins", "libttq_ops.so"))
        x = torch.randn(2, 1, 28, 28) if name == "small_cnn" else torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            want, got = torch.jit.load(p + ".ttq.pt").eval()(x), torch.jit.load(p + ".packed.pt").eval()(x)
        check(f"{name}: this PyTorch runs the packed model with the ternary model's outputs",
              torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item()), str((got - want).abs().max()))
        r = run(ttq, "inspect", p + ".ttq.pt", "--json")
        meta = json.loads(r.stdout) if r.returncode == 0 else {}
        check(f"{name}: inspect names the LibTorch that wrote it", meta.get("libtorch_version", "").split(".")[:2]
              == writer.split(".")[:2], r.stderr.strip() or str(meta.get("libtorch_version")))

    # The other line's transformer: it works where both have its operators, else one clear line.
    p = os.path.join(out, TRANSFORMER)
    refused = os.path.join(out, f"{TRANSFORMER}.by-{torch.__version__}.pt")
    r = run(ttq, "quantize", p + ".pt", "-o", refused)
    if torch.__version__ >= "2" or writer < "2":
        check(f"{TRANSFORMER} from PyTorch {writer} quantizes", r.returncode == 0, r.stderr.strip())
    else:
        lines = r.stderr.strip().splitlines()
        check(f"{TRANSFORMER} from PyTorch {writer}: exit 1, one line naming the operator and LibTorch, no output",
              r.returncode == 1 and len(lines) == 1 and "aten::scaled_dot_product_attention" in lines[0]
              and "LibTorch 1.13" in lines[0] and not os.path.exists(refused), r.stderr.strip())
    failed = results.count(False)
    print(f"cross-version: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("write", "read"):
        sys.exit(__doc__)
    os.makedirs(sys.argv[3], exist_ok=True)
    sys.exit(write(sys.argv[2], sys.argv[3]) if sys.argv[1] == "write" else read(sys.argv[2], sys.argv[3]))
