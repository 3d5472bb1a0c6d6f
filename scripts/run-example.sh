#!/usr/bin/env bash
# The main job: sets up whatever is missing (libtorch, a release build), then scores the example
# images with `headclip predict`, writing maps and overlays to out/examples.
#
# CLIP weights come from --weights / HEADCLIP_WEIGHTS, or are fetched into the cache where the
# internet is reachable; offline and without weights it stops within seconds, naming the file.
# Extra arguments go to `headclip predict` (e.g. --weights ViT-B-16.pt --image-size 512).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
cargo build --release --quiet -p headclip-cli
exec target/release/headclip predict --out out/examples "$@" examples/images/*.png
