#!/usr/bin/env bash
# The local base image of the test build: Debian bookworm (python3.11) from Debian's packages,
# made with debootstrap and imported into docker, for machines that pull from no registry.
#   deploy/image/build_base.sh [TAG]     (default local/debian:bookworm-py311)
# Skips all work when the tag already exists. Needs root, debootstrap and a running dockerd.
set -euo pipefail
TAG=${1:-local/debian:bookworm-py311}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base $TAG: present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build_base: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
ROOT=$(mktemp -d /tmp/easel-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
# python3-venv brings ensurepip: the image makes its own venv and never touches Debian's python.
nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv bookworm "$ROOT" "$MIRROR"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import - "$TAG"
echo "base $TAG: built"
