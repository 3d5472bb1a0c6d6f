#!/usr/bin/env bash
# The whole test suite: sets up libtorch if missing, then runs every test of the workspace.
# Tests read the shared data sets in place at ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
cargo test --workspace --release --no-fail-fast "$@"
