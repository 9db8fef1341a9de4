#!/usr/bin/env bash
# Installs what the test suite needs besides Deno: moto's S3 server (a Python package).
# Idempotent and quiet: does nothing when the pinned version is already installed.
set -euo pipefail

MOTO_VERSION="5.2.5"

python="$(command -v python3 || true)"
if [[ -z "$python" ]]; then
  echo "setup_test_deps: python3 is required for moto (apt-get install python3 python3-pip)" >&2
  exit 1
fi

installed="$("$python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)"
if [[ "$installed" == "$MOTO_VERSION" ]] && "$python" -c 'import flask, flask_cors' 2>/dev/null; then
  exit 0
fi

# Debian's system Python refuses pip installs without --break-system-packages.
pip_flags=(--quiet --disable-pip-version-check --no-input --root-user-action=ignore)
if "$python" -m pip install --help 2>/dev/null | grep -q -- '--break-system-packages'; then
  if [[ -z "${VIRTUAL_ENV:-}" ]] && "$python" -c 'import sys; sys.exit(0 if sys.prefix == sys.base_prefix else 1)' &&
    [[ -e "$("$python" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]]; then
    pip_flags+=(--break-system-packages)
  fi
fi
"$python" -m pip install "${pip_flags[@]}" "moto[server]==${MOTO_VERSION}"
