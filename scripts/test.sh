#!/usr/bin/env bash
# The whole test suite: sets up libtorch if missing, runs every test of the workspace, then
# builds the Python package into .venv-test (scripts/setup-python.sh) and runs its tests
# (python/tests: the package, the Ray examples, the KServe v2 client). Tests read the shared
# data sets in place at ../shared/data. Arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
cargo test --workspace --release --no-fail-fast "$@"
# The Python tests compare with the CLI binary that cargo test just built.
scripts/setup-python.sh
.venv-test/bin/python -m pytest python/tests -p no:cacheprovider -ra
