#!/usr/bin/env bash
# The test image: the Dockerfile built from the local base (build_base.sh) with this
# machine's CPU wheel of the tests' torch, pip trusting this machine's CA bundle.
#   deploy/image/build_image.sh [TAG]    (default easel:test)
# The build context is a copy of what the Dockerfile reads, plus ca.crt and the torch wheel
# in its deploy/image/pip/ (build stage only: neither reaches the image). Docker's layer
# cache makes a rebuild with unchanged inputs take seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-easel:test}
BASE=${EASEL_BASE_IMAGE:-local/debian:bookworm-py311}
TORCH=${TORCH:-$(sed -n 's/^TORCH *?= *//p' Makefile)}          # the tests' pin: torch==X
CA=${EASEL_BUILD_CA:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
WHEELS=${PIP_FIND_LINKS:-/opt/wheels}
CONTEXT=${EASEL_IMAGE_CONTEXT:-/tmp/easel-image-context}

deploy/image/build_base.sh "$BASE"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT/deploy/image"
cp -r Dockerfile pyproject.toml README.md easel "$CONTEXT/"
cp -r deploy/image/pip "$CONTEXT/deploy/image/pip"
find "$CONTEXT/easel" -name __pycache__ -prune -exec rm -rf {} +
[ -f "$CA" ] && cp "$CA" "$CONTEXT/deploy/image/pip/ca.crt"
# the local wheel of the pinned torch, if this machine has one (else pip's index serves it)
for wheel in "$WHEELS"/"${TORCH/==/-}"*cp311*.whl; do
    [ -f "$wheel" ] && { ln "$wheel" "$CONTEXT/deploy/image/pip/" 2>/dev/null \
                         || cp "$wheel" "$CONTEXT/deploy/image/pip/"; }
done
nice -n 10 docker build --network host --build-arg BASE="$BASE" --build-arg TORCH="$TORCH" \
    -t "$TAG" "$CONTEXT"
rm -rf "$CONTEXT"
