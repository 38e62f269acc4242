#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit tests and end-to-end CLI tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure --parallel "$(nproc)"
