#!/usr/bin/env bash
# Prepares what tests/test_ohif_viewer.py needs and skips what is already there:
#   tests/.ohif/dist/          OHIF Viewer v3 prebuilt static build (from the npm tarball of
#                              @ohif/app; `npm install` of that package fails on unpublished
#                              @ohif dependency versions, but the tarball carries dist/)
#   tests/ohif/node_modules/   playwright-core, which drives Debian's /usr/bin/chromium
# Needs node >= 20 and npm, and network access to the npm registry the first time only.
set -euo pipefail

OHIF_VERSION="3.13.2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="$(cd "$here/.." && pwd)/.ohif"
stamp="$target/VERSION"

for tool in node npm tar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "setup.sh: '$tool' not found; install Node.js >= 20 with npm (Debian: nodejs npm)" >&2
        exit 1
    fi
done

node_major="$(node --version | sed 's/^v//; s/\..*//')"
if (( node_major < 20 )); then
    echo "setup.sh: node $(node --version) is too old; playwright-core needs Node.js >= 20" >&2
    exit 1
fi

if [[ -f "$target/dist/index.html" && "$(cat "$stamp" 2>/dev/null)" == "$OHIF_VERSION" ]]; then
    echo "setup.sh: OHIF $OHIF_VERSION already in $target/dist"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "setup.sh: fetching @ohif/app@$OHIF_VERSION"
    (cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
    tar -xzf "$work"/ohif-app-"$OHIF_VERSION".tgz -C "$work" package/dist
    if [[ ! -f "$work/package/dist/index.html" ]]; then
        echo "setup.sh: the @ohif/app@$OHIF_VERSION tarball has no dist/index.html" >&2
        exit 1
    fi
    # Swap in atomically enough for a test run: a half-copied dist never carries the stamp.
    rm -rf "$target"
    mkdir -p "$target"
    mv "$work/package/dist" "$target/dist"
    echo "$OHIF_VERSION" >"$stamp"
    echo "setup.sh: OHIF $OHIF_VERSION unpacked into $target/dist"
fi

if [[ -f "$here/node_modules/playwright-core/package.json" ]]; then
    echo "setup.sh: playwright-core already in $here/node_modules"
else
    (cd "$here" && npm ci --no-audit --no-fund --silent)
    echo "setup.sh: playwright-core installed in $here/node_modules"
fi
