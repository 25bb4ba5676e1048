#!/usr/bin/env bash
# Install the Debian packages that `make images` needs (hack/images.py):
#   podman       builds docker/*.Dockerfile (`podman build --isolation=chroot`, no engine)
#   debootstrap  makes the base image's root filesystem from Debian's packages
#   rsync        copies an image out of podman's storage, hard-linking what is unchanged
# busybox:1.36 needs only apt-get itself (apt-get download + dpkg -x).
#
# Idempotent: installs nothing when every package is already there. Needs root for
# apt-get; runs `apt-get update` only when something is missing (or apt has no lists).
set -euo pipefail

PACKAGES=(podman debootstrap rsync)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
# `apt-get download busybox-static` needs package lists even when nothing is missing.
lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null || true)
if [[ ${#missing[@]} -eq 0 && -n "$lists" ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "[install-tools] need root to install: ${missing[*]:-apt package lists}" >&2
  exit 1
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [[ ${#missing[@]} -gt 0 ]]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "[install-tools] installed ${missing[*]:-nothing (package lists refreshed)} in $(( $(date +%s) - start ))s" >&2
