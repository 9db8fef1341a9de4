#!/usr/bin/env bash
# Installs what tests/sftp_test.ts needs: OpenSSH's sshd and ssh-keygen (Debian
# `openssh-server`, which pulls in `openssh-client`). The tests start their own sshd on a
# loopback port with a throwaway config (tests/_sftp_server.ts); nothing is started here and
# no system service is enabled. Idempotent and quiet: does nothing when both are present.
set -euo pipefail

if [[ -x /usr/sbin/sshd ]] && command -v ssh-keygen >/dev/null; then
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "setup_sftp: /usr/sbin/sshd is missing and apt-get is not available" >&2
  echo "setup_sftp: install OpenSSH's server (openssh-server) by hand" >&2
  exit 1
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "setup_sftp: need root (or sudo) to apt-get install openssh-server" >&2
    exit 1
  fi
  sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
/usr/sbin/sshd -V 2>&1 | head -n 1 >&2 || true
