#!/usr/bin/env bash
# The Python test environment: a git-ignored virtual environment .venv-test with the pinned
# test tools (pytest, Ray, tritonclient, ...) and the headclip package built from
# crates/headclip-py against the project's libtorch (.libtorch, from setup-libtorch.sh).
# Installs the pinned tools once (a stamp records them); rebuilds the wheel every time, which
# takes seconds when cargo's build is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-test
PACKAGES=(
  "maturin==1.16.0"
  "pytest==9.2.0"
  "numpy==2.4.6"
  "pillow==13.0.0"
  "ray[data,serve]==2.60.0"
  "tritonclient[http]==2.73.0"
  "requests==2.34.2"
)
STAMP="$VENV/installed"

scripts/setup-libtorch.sh
want="${PACKAGES[*]}"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
  echo "headclip: installing the Python test tools into $VENV (one time)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "${PACKAGES[@]}"
  echo "$want" > "$STAMP"
fi

# The wheel links libtorch by name only (no rpath): headclip/__init__.py loads it first.
export LIBTORCH="$PWD/.libtorch/site/torch"
target="${CARGO_TARGET_DIR:-target}"
[[ "$target" == /* ]] || target="$PWD/$target"
rm -rf "$target/wheels"
(cd crates/headclip-py && "../../$VENV/bin/maturin" build --release --quiet -o "$target/wheels")
"$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$target"/wheels/headclip-*.whl
