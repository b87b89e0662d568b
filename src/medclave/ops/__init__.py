"""Operating the services: health and readiness, graceful drain, Prometheus metrics, JSON logs,
OpenTelemetry traces and configuration files (issue 16).

One small helper part beside :mod:`medclave.serving` (layer 3.6: above it, below the services),
never imported by the pure libraries. Each service wires it in with a few lines: its settings
inherit :class:`~medclave.ops.settings.OpsSettings`, its app is given to
:func:`~medclave.ops.http.instrument` with its readiness checks and metrics, and it is served
by :func:`~medclave.ops.lifecycle.serve`, which drains on SIGTERM. The modules import nothing
heavy at package import: the client's SDK path uses :mod:`medclave.ops.logs` only.
"""
