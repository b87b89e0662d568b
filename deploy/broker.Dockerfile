# The key broker's OCI image (issue 16). Multi-stage: the builder makes the project's wheel and a
# virtual environment with it and the broker's extra; the runtime stage holds only that
# environment (no compiler, no llama.cpp, no source tree).
# NOT BUILT IN THIS REPOSITORY'S CI: there is no container engine there. tests/ops/test_images.py
# parses this file and checks what a reviewer relies on; build and scan it in your pipeline.
# Build from the repository root:  docker build -f deploy/broker.Dockerfile -t medclave-kbs .
# Pin the base image by digest when you build (a digest cannot be checked without the registry,
# so none is written here):
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest your registry resolves>
# Run with a read-only root filesystem (deploy/compose.yaml):
#   docker run --read-only --tmpfs /tmp -v kbs-data:/var/lib/medclave -p 8450:8450 \
#     -p 9450:9450 medclave-kbs
# The KEK and the signing key are created in /var/lib/medclave on first start (0600), or come
# from MEDCLAVE_KBS_KEK / MEDCLAVE_KBS_SIGNING_KEY given at run time by a secret store (never
# baked into the image): docs/operations.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN python -m venv /opt/medclave \
    && /opt/medclave/bin/pip wheel --no-deps --wheel-dir /dist /src \
    && /opt/medclave/bin/pip install "$(ls /dist/medclave-*.whl)[broker,otlp]" \
    && /opt/medclave/bin/python -c "import medclave.kbs.server"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 medclave \
    && useradd --system --uid 10001 --gid medclave --home-dir /var/lib/medclave medclave \
    && mkdir -p /var/lib/medclave /etc/medclave && chown medclave:medclave /var/lib/medclave \
    && chmod 0700 /var/lib/medclave
COPY --from=builder /opt/medclave /opt/medclave
COPY deploy/config/kbs.toml /etc/medclave/kbs.toml
# Read-only root filesystem: nothing is written outside the volume (no bytecode caches; HOME
# and the working directory are the volume; /tmp is a tmpfs at run time).
ENV PATH=/opt/medclave/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/var/lib/medclave \
    MEDCLAVE_KBS_HOST=0.0.0.0 MEDCLAVE_KBS_METRICS_HOST=0.0.0.0 \
    MEDCLAVE_KBS_DATA_DIR=/var/lib/medclave
USER 10001:10001
WORKDIR /var/lib/medclave
VOLUME ["/var/lib/medclave"]
EXPOSE 8450 9450
# Liveness. Readiness (store open, signing key loaded) is GET /readyz: point the
# orchestrator's readiness probe at it (Kubernetes: readinessProbe httpGet /readyz port 8450).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8450/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["medclave", "kbs", "serve", "--config", "/etc/medclave/kbs.toml"]
