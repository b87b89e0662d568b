"""What every service's settings share for operations: metrics port, log level and format,
drain and shutdown deadlines, tracing. Inherited by each service's settings model beside
:class:`~medclave.serving.ServingSettings` (so ``MEDCLAVE_KBS_METRICS_PORT`` and so on)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class OpsSettings(BaseModel):
    # Prometheus exposition on a port of its own (never the service's port: the API may face
    # the hospital's network, the metrics only the monitoring one). None: no metrics server.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: LogLevel = "INFO"
    # json: one object per line, the same shape for every service; text: for a terminal.
    log_format: Literal["json", "text"] = "json"
    # SIGTERM: /readyz answers 503 for drain_seconds while requests are still taken (so a load
    # balancer stops sending), then the listener closes and in-flight requests get up to
    # shutdown_timeout_seconds to finish before they are cut.
    drain_seconds: float = Field(default=0.0, ge=0, le=600)
    shutdown_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # OpenTelemetry: off by default; "console" writes spans to the log stream, an http(s) URL
    # exports OTLP (needs opentelemetry-exporter-otlp-proto-http installed).
    tracing: Literal["off", "console", "otlp"] = "off"
    otlp_endpoint: str | None = None

    @model_validator(mode="after")
    def _otlp_has_an_endpoint(self) -> OpsSettings:
        # Checked at start (config.invalid names the field), not at the first span.
        if self.tracing == "otlp":
            if not self.otlp_endpoint:
                raise ValueError("tracing = 'otlp' needs otlp_endpoint")
            if not self.otlp_endpoint.startswith(("http://", "https://")):
                raise ValueError("otlp_endpoint must be an http(s) URL")
        return self
