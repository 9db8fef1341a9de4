#!/usr/bin/env bash
# Installs what tests/age_test.ts needs: the reference age CLI, `age` and `age-keygen`
# (Debian's `age` package), to check that what we encrypt is what age decrypts and the
# other way round. Idempotent and quiet: does nothing when both are present.
set -euo pipefail

if command -v age >/dev/null && command -v age-keygen >/dev/null; then
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "setup_age: age is missing and apt-get is not available" >&2
  echo "setup_age: install age (https://age-encryption.org) by hand" >&2
  exit 1
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "setup_age: need root (or sudo) to apt-get install age" >&2
    exit 1
  fi
  sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends age >/dev/null
age --version >&2
