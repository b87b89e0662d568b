# The hospital-side proxy's OCI image (issue 17, deploy/helm/medclave). Multi-stage; only the
# client extra (the SDK, the proxy, the verifier), no llama.cpp.
# Build from the repository root:  docker build -f deploy/proxy.Dockerfile -t medclave-proxy .
# The appraisal policy is mounted at the path policy_file names (the Helm chart mounts it from a
# ConfigMap); MEDCLAVE_PROXY_* variables override deploy/config/proxy.toml.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/medclave
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/medclave/bin/pip install "/src[client]" \
    && /opt/medclave/bin/python -c "import medclave.client.proxy"

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 medclave \
    && useradd --system --uid 10001 --gid medclave --home-dir /var/lib/medclave medclave \
    && mkdir -p /var/lib/medclave /etc/medclave && chown medclave:medclave /var/lib/medclave \
    && chmod 0700 /var/lib/medclave
COPY --from=builder /opt/medclave /opt/medclave
COPY deploy/config/proxy.toml /etc/medclave/proxy.toml
ENV PATH=/opt/medclave/bin:$PATH PYTHONDONTWRITEBYTECODE=1 \
    MEDCLAVE_PROXY_HOST=0.0.0.0 MEDCLAVE_PROXY_METRICS_HOST=0.0.0.0 \
    MEDCLAVE_PROXY_DATA_DIR=/var/lib/medclave
USER 10001:10001
WORKDIR /var/lib/medclave
VOLUME ["/var/lib/medclave"]
EXPOSE 8080 9080
STOPSIGNAL SIGTERM
ENTRYPOINT ["medclave", "proxy", "--config", "/etc/medclave/proxy.toml"]
