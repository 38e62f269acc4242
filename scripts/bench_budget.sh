#!/usr/bin/env bash
# Budgets against quantize's first/last rule on two models trained here in full precision on
# Fashion-MNIST: a CIFAR-style ResNet-20 (scripts/make_resnet20.py, BatchNorm after every
# convolution) and the small CNN without normalization (scripts/make_fixtures.py). For each:
# the time of `ttq sensitivity` on 2,000 held-out samples; one-shot, the rule against --max-drop MAX_DROP
# (ternary layers, ratio at the codes' entropy, top-1 on the 10,000 test images, of which the
# budget measured the first 2,000); then one epoch of TTQ fine-tuning with every default of the
# rule, of --target-ratio R (R: the rule's own ratio, so the same size) and of --max-drop MAX_DROP.
# A budget no layer fits (each one's one-shot drop alone is larger) is reported as "none".
# Usage: scripts/bench_budget.sh [FP_EPOCHS [THREADS [SUBSET [MAX_DROP [NETS]]]]]   defaults 3 2 20000 1
#   "resnet20 small_cnn" (SUBSET: training images of each run; MAX_DROP: the --max-drop budget).
set -euo pipefail
cd "$(dirname "$0")/.."
fp_epochs=${1:-3}; threads=${2:-2}; subset=${3:-20000}; max_drop=${4:-1}; nets=${5:-resnet20 small_cnn}
scripts/setup.sh
out=out/bench_budget
mkdir -p "$out"
results="$out/results.tsv"
: >"$results"
flags=(--threads "$threads" --no-progress)
json_field() { /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
top1() { build/ttq eval "$1" --json --threads "$threads" | json_field 'd["top1"]'; }
ratio() { build/ttq inspect "$1" --json | json_field '"%.2f %d" % (d["totals"]["ratio_entropy"], d["totals"]["coded_layers"])'; }
# A budget's run, or nothing written when no layer fits it (a usage error, said on stderr).
budget_run() { "$@" || [ $? -eq 2 ]; }

/usr/bin/python3 scripts/make_resnet20.py "$out/resnet20.pt" 0 20
/usr/bin/python3 scripts/make_fixtures.py "$out/fixtures" >/dev/null
cp "$out/fixtures/small_cnn.pt" "$out/small_cnn.pt"
for net in $nets; do
  m="$out/$net"
  rm -f "$m.drop1.pt" "$m.drop1.ft.pt"  # a budget no layer fits writes none
  if [ "$net" = resnet20 ]; then
    fp_args=(--optimizer sgd --lr 0.1 --weight-decay 2e-4 --crop-padding 2 --batch-size 128)
  else
    fp_args=(--optimizer adam --lr 0.002)
  fi
  build/ttq finetune "$m.pt" -o "$m.fp.pt" --fp --epochs "$fp_epochs" --subset "$subset" "${fp_args[@]}" \
    "${flags[@]}" >&2
  t0=$(date +%s.%N)
  build/ttq sensitivity "$m.fp.pt" --subset 2000 --threads "$threads" --json >"$m.sensitivity.json"
  t1=$(date +%s.%N)
  build/ttq quantize "$m.fp.pt" -o "$m.rule.pt" -q >/dev/null
  budget_run build/ttq quantize "$m.fp.pt" -o "$m.drop1.pt" --max-drop "$max_drop" --threads "$threads" -q >/dev/null
  read -r rule_ratio rule_layers <<<"$(ratio "$m.rule.pt")"
  build/ttq finetune "$m.fp.pt" -o "$m.rule.ft.pt" --epochs 1 --subset "$subset" "${flags[@]}" >&2
  build/ttq finetune "$m.fp.pt" -o "$m.ratio.ft.pt" --epochs 1 --subset "$subset" \
    --target-ratio "$rule_ratio" "${flags[@]}" >&2
  [ ! -f "$m.drop1.pt" ] ||
    build/ttq finetune "$m.fp.pt" -o "$m.drop1.ft.pt" --epochs 1 --subset "$subset" --max-drop "$max_drop" "${flags[@]}" >&2
  row=("$net" "$(/usr/bin/python3 -c "print($t1 - $t0)")" "$(top1 "$m.fp.pt")")
  for v in rule drop1 rule.ft ratio.ft drop1.ft; do
    if [ -f "$m.$v.pt" ]; then row+=("$(top1 "$m.$v.pt")" "$(ratio "$m.$v.pt")"); else row+=(none "- -"); fi
  done
  (IFS=$'\t'; echo "${row[*]}") >>"$results"
done

/usr/bin/python3 - "$results" "$fp_epochs" "$subset" "$threads" "$max_drop" <<'PY'
import sys
results, fp_epochs, subset, threads, max_drop = sys.argv[1:]
print(f"Budgets against the first/last rule (Fashion-MNIST: FP {fp_epochs} epochs and TTQ 1 epoch on {subset} "
      f"training images, top-1 on the 10000 test images, budgets measured on the first 2000; {threads} threads)")
print(f"| model | sensitivity (2000 samples) | FP | one-shot rule | one-shot --max-drop {max_drop} | 1 epoch rule | "
      f"1 epoch --target-ratio (rule's) | 1 epoch --max-drop {max_drop} |")
print("|---|---|---|---|---|---|---|---|")
for line in open(results).read().splitlines():
    f = line.split("\t")
    net, seconds, fp = f[0], float(f[1]), float(f[2])
    cells = []
    for i in range(3, len(f), 2):
        ratio, layers = f[i + 1].split()
        cells.append("none within the budget" if f[i] == "none" else f"{100 * float(f[i]):.2f}% ({ratio}x, {layers} layers)")
    print(f"| {net} | {seconds:.0f} s | {100 * fp:.2f}% | " + " | ".join(cells) + " |")
PY
