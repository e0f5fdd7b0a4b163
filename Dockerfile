# The image of easel's docker and kubernetes deployments: Python 3.11, torch, and easel
# installed as a package with the extras its flows and workers use, in the virtual
# environment /opt/easel. Flows load by module path (prefect.yaml), so a run needs no
# checkout. Nothing is downloaded at run time: models come from references (fsspec URIs, the
# MLflow registry) into EASEL_CACHE_DIR, which a volume can keep between runs.
#
# One file, two builds (docs/operations.md, "The image"):
#   GPU:  make image IMAGE=registry.example.com/easel:0.1.0
#         the public Python base and PyPI's Linux build of torch 2.13, which is a CUDA build
#         bringing its CUDA libraries (the host needs the NVIDIA driver and container toolkit)
#   test: deploy/image/build_image.sh (make test-image): a base made here with debootstrap
#         and this machine's CPU wheel of the same torch line, with no registry to pull from
# Files the build's pip needs (a CA bundle `ca.crt` its registry requires, local wheels)
# go in deploy/image/pip/ of the build context; they are used in the build stage only and
# never reach the final image.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
COPY deploy/image/pip/ /pip/
RUN python3 -m venv /opt/easel \
 && if [ -f /pip/ca.crt ]; then export PIP_CERT=/pip/ca.crt; fi \
 && /opt/easel/bin/pip install --find-links /pip --extra-index-url "${TORCH_INDEX_URL}" "${TORCH}"
# easel's dependencies first (a layer that outlives edits of easel), then easel itself
COPY pyproject.toml README.md /src/
RUN if [ -f /pip/ca.crt ]; then export PIP_CERT=/pip/ca.crt; fi \
 && mkdir /src/easel && touch /src/easel/__init__.py \
 && /opt/easel/bin/pip install "/src[s3,docker,kubernetes]" \
 && /opt/easel/bin/pip uninstall --yes easel
COPY easel /src/easel
RUN /opt/easel/bin/pip install --no-deps --no-build-isolation /src

FROM ${BASE}
# The user a worker runs the container as unless told otherwise; it owns only its home, the
# model cache and the working folder.
RUN useradd --create-home --uid 1000 easel \
 && mkdir /cache /work && chown easel:easel /cache /work
COPY --from=build /opt/easel /opt/easel
ENV PATH=/opt/easel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EASEL_CACHE_DIR=/cache \
    HF_HUB_OFFLINE=1
USER easel
WORKDIR /work
CMD ["easel", "--help"]
