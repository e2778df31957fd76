# syntax=docker/dockerfile:1.7
# medmlops-train (params.yaml images.train): the image every Kubeflow pipeline step runs in, GPU training
# included. Build from the repository root: `make images` (Docker where it runs, else buildah; k8s/README.md).
#
# Base: python:3.11-slim (or the same Debian bookworm + python3 made by `make base-image` where no registry is
# reachable) + the CUDA wheels that requirements.lock already pins, not nvidia/cuda:*-cudnn. torch 2.14.1 from
# PyPI depends on the nvidia-* cu13 wheels (cuBLAS, cuDNN 9, NCCL, ...), so the CUDA user-space libraries
# arrive through pip at exactly the versions the lock was resolved and tested with. An nvidia/cuda base would
# add a second, unused CUDA + cuDNN copy (several GB) and an Ubuntu Python to replace. The node only needs the
# NVIDIA driver (CUDA 13 wheels: driver >= 580), which the NVIDIA device plugin / GPU operator exposes.
#
# One stage, no second copy of the virtualenv. Up to the dependency layer the instructions are the serve image's,
# word for word (tests/test_images.py checks it), so the two images share those layers. TORCH_INDEX_URL as there
# (empty: the lock's CUDA build, what the GPU steps need; a CPU index only for a CPU-only train image).
# No index is hard-coded: pip uses its defaults or the configuration the build mounts (docker/build_image.py).
FROM python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && python3 -m venv /opt/venv \
    && pip install --quiet "pip>=24"
WORKDIR /app
# Dependencies first: this layer is rebuilt only when pyproject.toml, the lock or the cluster extras change.
COPY pyproject.toml requirements.lock ./
COPY docker/requirements-cluster.txt docker/
# Three layers, largest first, so that no commit holds the whole virtualenv at once (a commit briefly needs about
# three times its layer's size on disk): the CUDA wheels torch depends on (skipped with TORCH_INDEX_URL), torch and
# torchvision, then everything else. All three install from the lock, so they resolve as one install would.
RUN if [ -z "$TORCH_INDEX_URL" ]; then \
        grep -E '^(nvidia-|cuda-|triton==)' requirements.lock > /tmp/cuda.txt \
        && pip install --no-deps -r /tmp/cuda.txt && rm /tmp/cuda.txt; \
    fi
RUN torch_version="$(sed -n 's/^torch==//p' requirements.lock)" \
    && torchvision_version="$(sed -n 's/^torchvision==//p' requirements.lock)" \
    && test -n "$torch_version" && test -n "$torchvision_version" \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-deps --index-url "$TORCH_INDEX_URL" "torch==${torch_version}" "torchvision==${torchvision_version}"; \
    else \
        pip install --no-deps "torch==${torch_version}" "torchvision==${torchvision_version}"; \
    fi
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/deps.txt \
    && pip install -c requirements.lock -r /tmp/deps.txt -r docker/requirements-cluster.txt \
    && rm /tmp/deps.txt \
    && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
# git: DVC and the provenance check (`git status`) shell out to it. After the dependency layer, so that this image
# and the serve image share every layer up to there (one copy on disk, one build with buildah --layers/Docker).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
# The project (the .dockerignore allow-list decides what is in the context), installed non-editable:
# the code lives in site-packages, /app keeps params.yaml, dvc files, components/, pipelines/, ...
COPY . .
RUN pip install --no-deps . && rm -rf build src ./*.egg-info \
    && mkdir -p data reports && chown 10001:10001 data reports
# data/ is the PVC mount point of the pipeline steps and reports/ a run output, so both belong to the runtime user;
# the code stays root-owned. Every other run-time write goes under $HOME or /tmp (emptyDirs in Kubernetes):
# MEDMLOPS_STATE_DIR moves the `.medmlops/` defaults (runs, MLflow SQLite, the pipeline's data record, ...).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    MEDMLOPS_STATE_DIR=/home/app/.medmlops \
    XDG_CACHE_HOME=/home/app/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    BENTOML_DO_NOT_TRACK=true \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    GX_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    GIT_PYTHON_REFRESH=quiet \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# Pipeline steps are one-shot processes whose success is their exit code; Kubeflow watches the pod.
HEALTHCHECK NONE
CMD ["medmlops", "--help"]
