#!/usr/bin/env bash
# Installs Azurite, the Azure Blob Storage emulator tests/abs_test.ts runs on loopback, at the
# version pinned below, into $LITESTREAM_AZURITE_DIR (default <repo>/.bench/azurite, ignored
# by git) with `npm install --prefix`, and prints the path of its blob service entry script
# (run it as `node <path> --blobHost 127.0.0.1 --blobPort 0 ...`).
# tests/_azurite.ts runs Azurite from that directory only, never an `azurite` found on PATH.
# 3.35.0 is the last Azurite that runs on Node 20 (3.36 and later need Node 21+).
# Idempotent and quiet: does nothing when the pinned version is already there. Safe to run
# concurrently: each run installs into a private temp dir and moves it into place with one
# rename. Needs node and npm, and the npm registry. A cold install takes about 20 s.
set -euo pipefail

AZURITE_VERSION="3.35.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LITESTREAM_AZURITE_DIR:-$root/.bench/azurite}"
entry="node_modules/azurite/dist/src/blob/main.js"

# Prints the Azurite version installed under $1, if its blob entry script is there.
installed_version() {
  [[ -f "$1/$entry" ]] || return 1
  node -p 'require(process.argv[1]).version' "$1/node_modules/azurite/package.json" 2>/dev/null
}

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup_azurite: $tool is required to install Azurite (https://nodejs.org)" >&2
    exit 1
  fi
done

if [[ "$(installed_version "$dir" || true)" == "$AZURITE_VERSION" ]]; then
  echo "$dir/$entry"
  exit 0
fi

mkdir -p "$(dirname "$dir")"
tmp="$(mktemp -d "$dir.install-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# --ignore-scripts: Azurite needs no install scripts, and none of its dependencies' run.
# Output is kept for failures only.
if ! npm install --prefix "$tmp/pkg" --no-audit --no-fund --no-update-notifier \
  --ignore-scripts --omit=dev --loglevel=error "azurite@${AZURITE_VERSION}" \
  >"$tmp/npm.log" 2>&1; then
  cat "$tmp/npm.log" >&2
  echo "setup_azurite: npm could not install azurite@${AZURITE_VERSION}" >&2
  exit 1
fi
got="$(installed_version "$tmp/pkg" || true)"
if [[ "$got" != "$AZURITE_VERSION" ]]; then
  echo "setup_azurite: installed Azurite reports \"$got\", want \"$AZURITE_VERSION\"" >&2
  exit 1
fi
# Replace an older or broken install; a concurrent run may have finished first.
if [[ -e "$dir" ]]; then mv -f "$dir" "$tmp/old" 2>/dev/null || true; fi
mv -T "$tmp/pkg" "$dir" 2>/dev/null ||
  [[ "$(installed_version "$dir" || true)" == "$AZURITE_VERSION" ]]
echo "$dir/$entry"
