# syntax=docker/dockerfile:1.7
# medmlops-train (params.yaml images.train): the image every Kubeflow pipeline step runs in, GPU training
# included. Build from the repository root: `make images` (docker build -f docker/train.Dockerfile .).
#
# Base: python:3.11-slim + the CUDA wheels that requirements.lock already pins, not nvidia/cuda:*-cudnn.
# torch 2.14.1 from PyPI depends on the nvidia-* cu13 wheels (cuBLAS, cuDNN 9, NCCL, ...), so the CUDA
# user-space libraries arrive through pip at exactly the versions the lock was resolved and tested with.
# An nvidia/cuda base would add a second, unused CUDA + cuDNN copy (several GB) and an Ubuntu Python to
# replace. The node only needs the NVIDIA driver (CUDA 13 wheels: driver >= 580), which the NVIDIA
# device plugin / GPU operator exposes to the container.

# ---- builder: a self-contained virtualenv in /opt/venv; pip caches and build files stay here -------
FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install --quiet "pip>=24"
WORKDIR /app
# Dependencies first: this layer is rebuilt only when pyproject.toml, the lock or the cluster extras change.
COPY pyproject.toml requirements.lock ./
COPY docker/requirements-cluster.txt docker/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/deps.txt \
    && pip install -c requirements.lock -r /tmp/deps.txt -r docker/requirements-cluster.txt
# The project (the .dockerignore allow-list decides what is in the context), installed non-editable:
# the code lives in site-packages, /app keeps params.yaml, dvc files, components/, pipelines/, ...
COPY . .
RUN pip install --no-deps . && rm -rf build src ./*.egg-info

# ---- runtime ------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# git: DVC and the model contract's commit lookup shell out to it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --from=builder /app /app
# Pipeline steps write beside the project (data/ is the PVC mount point, reports/ and .medmlops/ are
# run outputs), so these folders belong to the runtime user; the code itself stays root-owned.
RUN mkdir -p data reports .medmlops && chown 10001:10001 data reports .medmlops
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    XDG_CACHE_HOME=/home/app/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    BENTOML_DO_NOT_TRACK=true \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    GX_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# Pipeline steps are one-shot processes whose success is their exit code; Kubeflow watches the pod.
HEALTHCHECK NONE
CMD ["medmlops", "--help"]
