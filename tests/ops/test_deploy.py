"""deploy/: the example configurations validate against the settings models; the alert rules
and the dashboard use only metrics the services export; every alert has a runbook section. (The
Dockerfiles and the compose file: test_images.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from medclave.auth.idp_server import IdpSettings
from medclave.client.proxy import ProxySettings
from medclave.enclave.settings import EnclaveSettings
from medclave.kbs.settings import KbsSettings
from medclave.ops.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MODELS = {"enclave": EnclaveSettings, "kbs": KbsSettings, "proxy": ProxySettings,
          "idp": IdpSettings}
PROMQL_BUILTINS = {"up", "ALERTS"}


def exported_metrics() -> set[str]:
    """Metric names as the source declares them, with the series Prometheus derives."""
    names: set[str] = set()
    for path in (ROOT / "src" / "medclave").rglob("*.py"):
        names |= set(re.findall(r'"(medclave_[a-z_]+)"', path.read_text()))
    derived = {n + s for n in names for s in ("_total", "_bucket", "_count", "_sum", "_created")}
    return names | derived | PROMQL_BUILTINS


def used_metrics(expr: str) -> set[str]:
    words = set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\b(?=\s*[{\[(]|\s|$|\))", expr))
    return {w for w in words if w.startswith("medclave_") or w in PROMQL_BUILTINS}


@pytest.mark.parametrize("service", sorted(MODELS))
def test_each_example_configuration_is_valid(service: str) -> None:
    settings = load_settings(MODELS[service], config_file=DEPLOY / "config" / f"{service}.toml")
    assert settings.metrics_port is not None and settings.log_format == "json"


def test_alert_rules_use_exported_metrics_and_each_has_a_runbook_section() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    runbook = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, flags=re.M)}
    known = exported_metrics()
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        used = used_metrics(rule["expr"])
        assert used and used <= known, (rule["alert"], used - known)
        link = rule["annotations"]["runbook"]
        assert link == f"docs/operations.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in anchors, f"no runbook section for {rule['alert']}"


def test_the_dashboard_charts_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "medclave.json").read_text())
    known = exported_metrics()
    charted: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = used_metrics(target["expr"])
            assert used and used <= known, (panel["title"], used - known)
            charted |= used
    for needed in ("medclave_requests_total", "medclave_refusals_total",
                   "medclave_key_releases_total", "medclave_engine_tokens_per_second",
                   "medclave_engine_queue_depth", "medclave_attestation_age_seconds",
                   "medclave_audit_entries", "medclave_audit_checkpoint_age_seconds",
                   "medclave_request_duration_seconds_bucket", "ALERTS"):
        assert needed in charted, needed
