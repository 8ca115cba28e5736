# syntax=docker/dockerfile:1
# mimo-serve: the model server image. CPU by default; the same image runs on a GPU when built with
# GPU=1 (onnxruntime-gpu and TensorFlow's CUDA wheels from pip; no CUDA base image needed).
#
#   docker build -t mimo-serve .                                     # the server; models at /models
#   docker build -t mimo-serve:gpu --build-arg GPU=1 .               # + onnxruntime-gpu, CUDA wheels
#   docker build -t mimo-serve:demo --target demo .                  # models exported at build time
#   docker build -t mimo-serve:demo --target demo \
#       --build-arg DEMO_EXPORT_ARGS="--image-size 71 --epochs 1 --samples 64" .   # small and quick
#
#   docker run -p 8500:8500 -p 8501:8501 -p 8000:8000 -v "$PWD/models:/models:ro" mimo-serve
#   docker run --gpus all -p 8500:8500 -p 8501:8501 -v "$PWD/models:/models:ro" mimo-serve:gpu
#   docker run -p 8500:8500 -p 8501:8501 mimo-serve:demo
#   curl localhost:8501/v2/health/ready                                # 200 once the models are loaded
#
# gRPC (KServe v2, TF Serving, health, reflection) on 8500 (MIMO_PORT); HTTP on 8501
# (MIMO_HTTP_PORT; 0 = off): KServe v2 REST (/v2/health/ready, /v2/models/{m}/infer, ...) and
# TensorFlow Serving REST (/v1/models/{m}:predict); Prometheus /metrics on 8000 (MIMO_METRICS_PORT).
# Settings: flags after the image name replace the default CMD; MIMO_* variables work too.

# ---- transport: the wheel, with mimo's native transport (Rust) compiled in ----
# The Rust toolchain stays in this stage; the image carries only the installed wheel (abi3, so the
# bookworm Python that builds it and the base image's Python both load it).
FROM rust:1-slim-bookworm AS transport
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/wheel-build \
 && /opt/wheel-build/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/wheel-build/bin/pip wheel --no-cache-dir --no-deps -w /wheels . \
 && ls /wheels/*-abi3-*.whl

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_PROGRESS_BAR=off \
    VIRTUAL_ENV=/opt/mimo \
    PATH=/opt/mimo/bin:$PATH

# ---- build: a virtual environment with the server's dependencies, then the project itself ----
FROM base AS build
ARG GPU=0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
RUN python -m venv "$VIRTUAL_ENV"
# Dependencies in a layer of their own: editing the sources does not reinstall TensorFlow.
# With GPU=1 the CPU onnxruntime is left out (it conflicts with onnxruntime-gpu: same package).
# TensorFlow's C++ headers (430 MB, for compiling custom ops) are not needed to serve.
COPY pyproject.toml deploy/docker/requirements.py ./
RUN set -- server; if [ "$GPU" = 1 ]; then set -- server gpu; fi \
 && python requirements.py pyproject.toml "$@" > requirements.txt \
 && cat requirements.txt \
 && pip install -r requirements.txt \
 && rm -rf "$VIRTUAL_ENV"/lib/python3*/site-packages/tensorflow/include
COPY --from=transport /wheels /wheels
# -P: import the installed wheel, not a source folder
RUN pip install --no-deps /wheels/*.whl \
 && rm -rf /wheels \
 && pip check \
 && python -P -c "import mimo.serving.app, mimo.client, mimo.export, onnxruntime as o; print(o.get_available_providers())" \
 && python -P -c "from mimo.serving.transports import native as n; assert n.available(), n.IMPORT_ERROR"

# ---- runtime: the venv, a non-root user, health check, and `mimo serve` ----
FROM base AS runtime
ARG GPU=0
LABEL org.opencontainers.image.title="mimo-serve" \
      org.opencontainers.image.description="gRPC and HTTP model server for multi-input/multi-output Keras models (Open Inference Protocol / KServe v2, TF Serving API)"
RUN groupadd --gid 10001 mimo \
 && useradd --uid 10001 --gid mimo --home-dir /home/mimo --create-home --shell /usr/sbin/nologin mimo \
 && mkdir -p /models
COPY --from=build /opt/mimo /opt/mimo
RUN python -P -c "from mimo.serving.transports import native as n; assert n.available(), n.IMPORT_ERROR"
# GPU image: make the CUDA libraries that came as pip wheels (nvidia-*-cu12) visible to the dynamic
# loader, so onnxruntime-gpu's CUDA provider finds them as TensorFlow does.
RUN if [ "$GPU" = 1 ]; then \
      printf '%s\n' /opt/mimo/lib/python3*/site-packages/nvidia/*/lib > /etc/ld.so.conf.d/mimo-nvidia-wheels.conf \
      && ldconfig; \
    fi
COPY deploy/docker/healthcheck.py /usr/local/lib/mimo/healthcheck.py
ENV HOME=/home/mimo \
    MIMO_MODEL_REPOSITORY=/models \
    MIMO_HOST=0.0.0.0 \
    MIMO_PORT=8500 \
    MIMO_HTTP_PORT=8501 \
    MIMO_METRICS_PORT=8000 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /home/mimo
# numeric, so Kubernetes can verify runAsNonRoot
USER 10001:10001
# 8500 gRPC, 8501 HTTP (KServe v2 REST, TF Serving REST), 8000 metrics
EXPOSE 8500 8501 8000
# Ready = HTTP GET /v2/health/ready on MIMO_HTTP_PORT answers 200; with HTTP off (MIMO_HTTP_PORT=0)
# or not listening there, grpc.health.v1.Health (service "") on MIMO_PORT decides instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/mimo/healthcheck.py"]
STOPSIGNAL SIGTERM
# exec form: the server is PID 1 and receives SIGTERM itself (it drains, then exits 0)
ENTRYPOINT ["mimo", "serve"]
CMD ["--model-repository", "/models", "--host", "0.0.0.0"]

# ---- demo: the notebook's models exported at build time and baked in (no volume needed) ----
FROM runtime AS demo-models
# extra `mimo export` flags, e.g. "--image-size 71 --epochs 1 --samples 64" or "--models mlp qa"
ARG DEMO_EXPORT_ARGS=""
# hadolint ignore=SC2086
RUN mimo export --out /home/mimo/models --quiet $DEMO_EXPORT_ARGS

FROM runtime AS demo
COPY --from=demo-models /home/mimo/models /models

# ---- the default target: the server without models (mount a repository at /models) ----
FROM runtime AS server
