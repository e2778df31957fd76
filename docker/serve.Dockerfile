# syntax=docker/dockerfile:1.7
# medmlops-serve (params.yaml images.serve): slim CPU image for BentoML serving (`medmlops serve FAMILY`),
# the INFORMER monitoring service (`medmlops monitor serve`), the Evidently UI (`evidently ui`), the drift
# report CronJob and the MLflow tracking server (`mlflow server`: the same MLflow release as the clients).
# Build from the repository root: `make images` (docker build -f docker/serve.Dockerfile .).
#
# torch comes from the CPU wheel index at the version pinned in requirements.lock (2.14.1+cpu satisfies
# the lock's `torch==2.14.1`), so none of the ~3 GB of nvidia-* CUDA wheels is installed.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ---- builder -------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install --quiet "pip>=24"
WORKDIR /app
COPY pyproject.toml requirements.lock ./
COPY docker/requirements-cluster.txt docker/
# CPU torch/torchvision first, at the lock's versions; the locked install below then finds them satisfied.
RUN torch_version="$(sed -n 's/^torch==//p' requirements.lock)" \
    && torchvision_version="$(sed -n 's/^torchvision==//p' requirements.lock)" \
    && test -n "$torch_version" && test -n "$torchvision_version" \
    && pip install --index-url "$TORCH_CPU_INDEX" "torch==${torch_version}+cpu" "torchvision==${torchvision_version}+cpu"
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/deps.txt \
    && pip install -c requirements.lock -r /tmp/deps.txt -r docker/requirements-cluster.txt \
    && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"
COPY . .
RUN pip install --no-deps . && rm -rf build src ./*.egg-info

# ---- runtime -------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Root-owned and read-only for the runtime user; Kubernetes mounts emptyDirs on /tmp and /home/app.
COPY --from=builder /app /app
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    XDG_CACHE_HOME=/home/app/.cache \
    BENTOML_HOME=/home/app/bentoml \
    MPLCONFIGDIR=/tmp/matplotlib \
    BENTOML_DO_NOT_TRACK=true \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    GX_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    GIT_PYTHON_REFRESH=quiet \
    HEALTHCHECK_PORT=3000 \
    HEALTHCHECK_PATH=/livez
USER 10001:10001
EXPOSE 3000 8080 8000 5000
# Defaults check BentoML's /livez; other processes set HEALTHCHECK_PORT/PATH (monitoring: 8080 /healthz,
# Evidently UI: 8000 /api/version, MLflow: 5000 /health). Kubernetes ignores this and uses its probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s%s' % (os.environ['HEALTHCHECK_PORT'], os.environ['HEALTHCHECK_PATH']), timeout=4)"]
CMD ["medmlops", "serve", "cxr-findings", "--alias", "champion", "--port", "3000"]
