#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package) for the web page's end-to-end test,
# if /usr/bin/chromium is missing. Idempotent and quiet: prints nothing when it is already there.
# Exit status: 0 when /usr/bin/chromium is usable afterwards, 1 when it could not be installed.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-browser: apt-get not found; install Chromium yourself ($CHROMIUM)" >&2
    exit 1
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "setup-browser: not root and no password-less sudo; cannot install chromium" >&2
        exit 1
    fi
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "setup-browser: installing chromium with apt-get (once)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "setup-browser: apt-get install chromium failed" >&2
    exit 1
fi
if [[ ! -x "$CHROMIUM" ]]; then
    echo "setup-browser: chromium installed but $CHROMIUM is missing" >&2
    exit 1
fi
