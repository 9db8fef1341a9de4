#!/usr/bin/env bash
# Installs what the test suite needs besides Deno: moto's S3 server (a Python package), at the
# version pinned below, into $LITESTREAM_MOTO_DIR (default <repo>/.bench/moto, ignored by git)
# with `pip install --target`. tests/_s3_servers.ts reads MOTO_VERSION from this file and runs
# `python3 -m moto.server` from that directory only, never a `moto_server` found on PATH (moto
# 5.2.1 there failed 23 steps with SignatureDoesNotMatch).
# Idempotent and quiet: does nothing when the pinned version is already there. Safe to run
# concurrently (tests/_s3_servers.ts runs it on first use): each run installs into a private
# temp dir and moves it into place with one rename.
set -euo pipefail

MOTO_VERSION="5.2.5"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LITESTREAM_MOTO_DIR:-$root/.bench/moto}"

python="$(command -v python3 || true)"
if [[ -z "$python" ]]; then
  echo "setup_test_deps: python3 is required for moto (apt-get install python3 python3-pip)" >&2
  exit 1
fi

# Prints the version of the moto that `python3 -m moto.server` runs with PYTHONPATH=$1, if it
# comes from $1 and its server's imports work; fails otherwise.
moto_version() {
  PYTHONPATH="$1" "$python" -c '
import os, sys
import flask, flask_cors, moto, moto.server
if not os.path.realpath(moto.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit("moto comes from " + moto.__file__)
print(moto.__version__)' "$1" 2>/dev/null
}

if [[ "$(moto_version "$dir" || true)" == "$MOTO_VERSION" ]]; then
  exit 0
fi

if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "setup_test_deps: pip is required to install moto (apt-get install python3-pip)" >&2
  exit 1
fi

mkdir -p "$(dirname "$dir")"
tmp="$(mktemp -d "$dir.install-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# --target installs moto and all its dependencies into $tmp, whatever the system has (and
# without needing --break-system-packages on Debian). pip's resolver warns about conflicts
# with unrelated system packages: keep its output for failures only.
if ! "$python" -m pip install --quiet --disable-pip-version-check --no-input \
  --root-user-action=ignore --target "$tmp/packages" "moto[server]==${MOTO_VERSION}" \
  >"$tmp/pip.log" 2>&1; then
  cat "$tmp/pip.log" >&2
  echo "setup_test_deps: pip could not install moto[server]==${MOTO_VERSION}" >&2
  exit 1
fi
got="$(moto_version "$tmp/packages" || true)"
if [[ "$got" != "$MOTO_VERSION" ]]; then
  echo "setup_test_deps: installed moto reports \"$got\", want \"$MOTO_VERSION\"" >&2
  exit 1
fi
# Replace an older or broken install; a concurrent run may have finished first.
old="$tmp/old"
if [[ -e "$dir" ]]; then mv -f "$dir" "$old" 2>/dev/null || true; fi
mv -T "$tmp/packages" "$dir" 2>/dev/null || [[ "$(moto_version "$dir" || true)" == "$MOTO_VERSION" ]]
