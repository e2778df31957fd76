# syntax=docker/dockerfile:1.7
# medmlops-serve (params.yaml images.serve): the image for BentoML serving (`medmlops serve FAMILY`), the
# INFORMER monitoring service (`medmlops monitor serve`), the Evidently UI (`evidently ui`), the drift report
# CronJob and the MLflow tracking server (`mlflow server`: the same MLflow release as the clients).
# Build from the repository root: `make images` (Docker where it runs, else buildah; k8s/README.md, "Images").
#
# One stage, no second copy of the virtualenv: the dependency layer is the lock's install, the next layer only
# the project itself. torch comes from requirements.lock (torch==2.14.1: PyPI's build, with the nvidia-* CUDA
# wheels it depends on) unless TORCH_INDEX_URL names a wheel index to take torch/torchvision from at the lock's
# versions first, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (2.14.1+cpu satisfies
# the lock's ==2.14.1, so none of the ~3 GB of CUDA wheels is installed). No index is hard-coded: pip uses its
# defaults or the configuration the build mounts (docker/build_image.py mounts the host's pip configuration and
# the local wheel indexes it names, read-only).
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
# The project (the .dockerignore allow-list decides what is in the context), installed non-editable: the code
# lives in site-packages; /app keeps params.yaml, dvc files, components/, pipelines/, serving/, monitoring/.
COPY . .
RUN pip install --no-deps . && rm -rf build src ./*.egg-info
# /app stays root-owned and read-only for the runtime user. Everything the programs write at run time goes under
# $HOME (/home/app) or /tmp, the two emptyDirs of the Kubernetes pods (read-only root filesystem):
# MEDMLOPS_STATE_DIR moves the `.medmlops/` defaults (MLflow SQLite, monitoring database, serving's spool, ...).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    MEDMLOPS_STATE_DIR=/home/app/.medmlops \
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
# OCI images have no HEALTHCHECK: buildah keeps it only with --format docker (make images passes it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s%s' % (os.environ['HEALTHCHECK_PORT'], os.environ['HEALTHCHECK_PATH']), timeout=4)"]
CMD ["medmlops", "serve", "cxr-findings", "--alias", "champion", "--port", "3000"]
