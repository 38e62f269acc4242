#!/usr/bin/env bash
# Installs what is missing (Debian 12 or 13 packages, as root; idempotent), then configures and
# builds ttq in ./build. Used by the README's two commands; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# libopenblas0-openmp: without it Debian's LibTorch runs linear layers on the reference BLAS,
# about ten times slower (scripts/bench_train.sh).
packages=(
  g++ make cmake ninja-build ccache pkg-config
  libtorch-dev libdnnl-dev libopenblas0-openmp libgloo-dev libcli11-dev libspdlog-dev libfmt-dev libzstd-dev libxxhash-dev nlohmann-json3-dev catch2
  zlib1g-dev libstb-dev libjpeg62-turbo-dev time  # time: peak memory in the benchmarks
  valgrind                                    # memcheck of export's graph rewriting (tests/cli/test_memcheck.py)
  python3 python3-torch python3-torchvision python3-pil librsvg2-bin  # fixtures; PyTorch reading our outputs
  dataset-fashion-mnist                       # the embedded default data
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
[[ -f build/CMakeCache.txt ]] || cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >&2
cmake --build build --parallel "$(nproc)" >&2
