#!/usr/bin/env bash
# Builds fake-gcs-server, the GCS emulator the tests run on loopback, at the version pinned
# below, into $LITESTREAM_GCS_DIR/bin (default <repo>/.bench/gcs/bin, ignored by git) with
# `go install` through the Go module proxy, and prints the binary's path.
# tests/_gcs_server.ts runs the binary from that directory only, never one found on PATH.
# Idempotent: does nothing when the binary there was built from the pinned version. Safe to
# run concurrently: each run builds into a private temp dir and moves the binary into place
# with one rename. Needs Go (`go` on PATH, $GO, or /usr/local/go/bin/go); v1.56.1 wants Go
# 1.26, which an older `go` fetches through the module proxy (GOTOOLCHAIN=auto).
# A cold build (empty module and build caches) took 2 min 21 s on 2 busy cores; with warm
# caches 8 s; when the pinned binary is in place, a few milliseconds.
set -euo pipefail

FAKE_GCS_SERVER_VERSION="v1.56.1"
module="github.com/fsouza/fake-gcs-server"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LITESTREAM_GCS_DIR:-$root/.bench/gcs}"
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac # GOBIN must be absolute
bin="$dir/bin/fake-gcs-server"

go="${GO:-$(command -v go || true)}"
if [[ -z "$go" && -x /usr/local/go/bin/go ]]; then go=/usr/local/go/bin/go; fi

# Prints the module version a Go binary was built from (`go version -m` reads it from the
# binary's build info), or nothing.
built_version() {
  "$go" version -m "$1" 2>/dev/null | awk -v m="$module" '$1 == "mod" && $2 == m { print $3 }'
}

if [[ -z "$go" ]]; then
  # Without Go the build info cannot be read: trust a binary that is already in place.
  if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
  fi
  echo "setup_gcs: go is required to build fake-gcs-server (https://go.dev/dl or apt-get install golang)" >&2
  exit 1
fi

if [[ -x "$bin" && "$(built_version "$bin")" == "$FAKE_GCS_SERVER_VERSION" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir/bin"
tmp="$(mktemp -d "$dir/install-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# CGO_ENABLED=0: a static binary, and no C compiler needed. GOFLAGS is cleared so a user's
# -mod=vendor or similar cannot break an install outside any module.
if ! GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" \
  "$go" install "$module@$FAKE_GCS_SERVER_VERSION" >"$tmp/go.log" 2>&1; then
  cat "$tmp/go.log" >&2
  echo "setup_gcs: go could not install $module@$FAKE_GCS_SERVER_VERSION" >&2
  exit 1
fi
got="$(built_version "$tmp/fake-gcs-server")"
if [[ "$got" != "$FAKE_GCS_SERVER_VERSION" ]]; then
  echo "setup_gcs: built fake-gcs-server reports \"$got\", want \"$FAKE_GCS_SERVER_VERSION\"" >&2
  exit 1
fi
mv -f "$tmp/fake-gcs-server" "$bin"
echo "$bin"
