#!/usr/bin/env bash
# Both LibTorch lines read each other's files (tests/cross_version.py): Debian 12's ttq (LibTorch
# 1.13, build/) and Debian 13's (LibTorch 2.6, scripts/debian13.sh, build-debian13/ here). Each line
# writes models scripted by its own PyTorch, then reads the other's. Needs both builds, and root for
# the Debian 13 root. Exit status 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=out-cross  # the same path from both lines (build/ and out/ differ between them)
rm -rf "$dir"
mkdir -p "$dir/debian12" "$dir/debian13"
/usr/bin/python3 tests/cross_version.py write build/ttq "$dir/debian12"
scripts/debian13.sh python3 tests/cross_version.py write build/ttq "$dir/debian13"
status=0
echo "== LibTorch 1.13 reads what LibTorch 2.6 wrote" >&2
/usr/bin/python3 tests/cross_version.py read build/ttq "$dir/debian13" || status=1
echo "== LibTorch 2.6 reads what LibTorch 1.13 wrote" >&2
scripts/debian13.sh python3 tests/cross_version.py read build/ttq "$dir/debian12" || status=1
exit $status
