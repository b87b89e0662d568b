# The key broker's OCI image (issue 16). Multi-stage; no llama.cpp, no compiler in the runtime.
# Build from the repository root:  docker build -f deploy/broker.Dockerfile -t medclave-kbs .
# Run with a read-only root filesystem (deploy/compose.yaml):
#   docker run --read-only --tmpfs /tmp -v kbs-data:/var/lib/medclave -p 8450:8450 \
#     -p 9450:9450 medclave-kbs
# The KEK and the signing key are created in /var/lib/medclave on first start (0600), or come
# from MEDCLAVE_KBS_KEK / MEDCLAVE_KBS_SIGNING_KEY (a secret store): docs/operations.md.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/medclave
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/medclave/bin/pip install "/src[broker]" \
    && /opt/medclave/bin/python -c "import medclave.kbs.server"

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 medclave \
    && useradd --system --uid 10001 --gid medclave --home-dir /var/lib/medclave medclave \
    && mkdir -p /var/lib/medclave /etc/medclave && chown medclave:medclave /var/lib/medclave \
    && chmod 0700 /var/lib/medclave
COPY --from=builder /opt/medclave /opt/medclave
COPY deploy/config/kbs.toml /etc/medclave/kbs.toml
ENV PATH=/opt/medclave/bin:$PATH PYTHONDONTWRITEBYTECODE=1 \
    MEDCLAVE_KBS_HOST=0.0.0.0 MEDCLAVE_KBS_METRICS_HOST=0.0.0.0 \
    MEDCLAVE_KBS_DATA_DIR=/var/lib/medclave
USER 10001:10001
WORKDIR /var/lib/medclave
VOLUME ["/var/lib/medclave"]
EXPOSE 8450 9450
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8450/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["medclave", "kbs", "serve", "--config", "/etc/medclave/kbs.toml"]
