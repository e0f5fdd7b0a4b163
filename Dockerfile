# The GPU image of easel's docker and kubernetes deployments: Python, a CUDA build of torch
# (PyPI's Linux wheels bring their CUDA libraries; the host needs the NVIDIA driver and
# container toolkit), and easel installed as a package with the extras its flows and
# workers use. Flows load by module path (prefect.yaml), so a run needs no checkout.
# Nothing is downloaded at run time: models come from references (fsspec URIs, the MLflow
# registry) into EASEL_CACHE_DIR, which a volume can keep between runs.
#   make image IMAGE=registry.example.com/easel:0.1.0   (then docker push, or `make push`)
FROM python:3.11-slim

ARG TORCH=torch==2.6.0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EASEL_CACHE_DIR=/cache \
    HF_HUB_OFFLINE=1

RUN pip install "${TORCH}"
COPY pyproject.toml README.md /src/
COPY easel /src/easel
RUN pip install "/src[s3,docker,kubernetes]" && rm -rf /src

WORKDIR /work
CMD ["easel", "--help"]
