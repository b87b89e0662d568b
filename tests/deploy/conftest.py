"""The chart rendered once per session, in every variant the tests read, by Helm's own engine
(tests/deploy/render.py in a child process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from medclave.attestation import initdata

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "medclave"
RELEASE, NAMESPACE = "mc", "medclave"
ENCLAVE_REPO = "registry.example/medclave-enclave"

# A stand-in agent policy and attestation agent configuration: the chart carries whatever init
# data it is given; what matters here is that the annotation is the one these bytes make.
INITDATA = initdata.build({
    "aa.toml": "[token_configs]\n[token_configs.kbs]\nurl = \"https://trustee.hospital.example\"\n",
    "policy.rego": "package agent_policy\n\ndefault ExecProcessRequest := false\n"
                   "default ReadStreamRequest := true\n",
})


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


KBS_KEY = "0" * 64
IDP = {"ipBlock": {"cidr": "198.51.100.10/32"}}
BASE: dict[str, Any] = {
    "enclave": {"image": {"digest": digest(1)},
                "coco": {"initdata": initdata.annotation(INITDATA)},
                "settings": {"kbs_keys": [KBS_KEY], "audit_origin": "hospital.example/enclave",
                             "audit_key_resource": "kbs:///ops/audit-key/enclave",
                             "auth_issuer": "https://idp.hospital.example",
                             "auth_jwks_url": "https://idp.hospital.example/jwks.json"}},
    "kbs": {"image": {"digest": digest(2)}},
    "proxy": {"image": {"digest": digest(3)},
              "appraisalPolicy": 'name = "coco"\nplatforms = ["sev-snp"]\n'},
    "networkPolicy": {"idp": {"peers": [IDP]}},
}

GATEWAY = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
APPS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hospital-apps"}},
        "podSelector": {"matchLabels": {"medclave-client": "true"}}}
OWNERS = {"ipBlock": {"cidr": "192.0.2.0/28"}}
REGISTRY = {"ipBlock": {"cidr": "203.0.113.0/24"}}

FULL: dict[str, Any] = {
    "enclave": {"replicas": 2,
                "settings": {"auth_tenants": ["st-marys"], "log_format": "json"}},
    "kbs": {"replicas": 2, "existingSecret": "medclave-kbs-keys",
            "runtimeClassName": "kata-qemu-snp"},
    "proxy": {"settings": {"idp_token_url": "https://idp.hospital.example/token",
                           "idp_client_id": "medclave-proxy", "reattest_seconds": 300}},
    "postgresql": {"existingSecret": "medclave-postgres", "cidrs": ["10.20.0.0/24"]},
    "networkPolicy": {"enclaveClients": [GATEWAY], "proxyClients": [APPS],
                      "brokerOwners": [OWNERS],
                      "imageRegistry": {"peers": [REGISTRY]}},
}


def merge(base: dict[str, Any], *overs: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for over in overs:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "snp": merge(BASE),
    "tdx": merge(BASE, {"enclave": {"runtimeClassName": "kata-qemu-tdx"}}),
    "gpu-snp": merge(BASE, {"enclave": {
        "runtimeClassName": "kata-qemu-nvidia-gpu-snp",
        "vllm": {"enabled": True, "image": {"digest": digest(4)},
                 "args": ["--model=/engine-models/model"]}}}),
    "full": merge(BASE, FULL),
    "no-proxy": merge(BASE, {"proxy": {"enabled": False}}),
}
# Each must be refused at render time, with these words in Helm's error.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "runc": (merge(BASE, {"enclave": {"runtimeClassName": "runc"}}),
             "not a Confidential Containers runtime class"),
    "kata-plain": (merge(BASE, {"enclave": {"runtimeClassName": "kata-qemu"}}),
                   "not a Confidential Containers runtime class"),
    "no-class": (merge(BASE, {"enclave": {"runtimeClassName": ""}}),
                 "not a Confidential Containers runtime class"),
    "kbs-runc": (merge(BASE, {"kbs": {"runtimeClassName": "runc"}}),
                 "not a Confidential Containers runtime class"),
    "no-initdata": (merge(BASE, {"enclave": {"coco": {"initdata": ""}}}),
                    "enclave.coco.initdata is required"),
    "initdata-not-base64": (merge(BASE, {"enclave": {"coco": {"initdata": "not base64!"}}}),
                            "must be base64"),
    "tag-not-digest": (merge(BASE, {"enclave": {"image": {"digest": "latest"}}}),
                       "pinned by digest"),
    "sim": (merge(BASE, {"enclave": {"settings": {"platform": "sim"}}}), "refused in a confidential VM"),
    "no-auth": (merge(BASE, {"enclave": {"settings": {"insecure_no_auth": True}}}),
                "refused in a confidential VM"),
    "override-port": (merge(BASE, {"enclave": {"settings": {"port": 9999}}}),
                      "set by the chart"),
    "replicas-sqlite": (merge(BASE, {"enclave": {"replicas": 2}}), "needs PostgreSQL"),
    "no-broker-key": (merge(BASE, {"enclave": {"settings": {"kbs_keys": None}}}),
                      "enclave.settings.kbs_keys is required"),
    "no-audit-key": (merge(BASE, {"enclave": {"settings": {"audit_key_resource": None}}}),
                     "enclave.settings.audit_key_resource is required"),
    "no-issuer": (merge(BASE, {"enclave": {"settings": {"auth_issuer": None}}}),
                  "enclave.settings.auth_issuer is required"),
    "no-idp-peers": (merge(BASE, {"networkPolicy": {"idp": {"peers": []}}}),
                     "networkPolicy.idp.peers is required"),
    "brokers-without-shared-keys": (merge(BASE, FULL, {"kbs": {"existingSecret": ""}}),
                                    "needs kbs.existingSecret"),
    "pg-without-cidrs": (merge(BASE, {"postgresql": {"existingSecret": "pg"}}),
                         "postgresql.cidrs is required"),
    "vllm-without-gpu": (merge(BASE, {"enclave": {"vllm": {"enabled": True,
                                                            "image": {"digest": digest(4)}}}}),
                         "needs the GPU runtime class"),
    "no-appraisal-policy": (merge(BASE, {"proxy": {"appraisalPolicy": ""}}),
                            "proxy.appraisalPolicy is required"),
    "sim-roots": (merge(BASE, {"proxy": {"settings": {"sim_roots": ["ab"]}}}), "sim"),
}
# Refused by values.schema.json alone: a misspelt key would otherwise be ignored in silence.
SCHEMA_REFUSED: dict[str, dict[str, Any]] = {
    "misspelt key": merge(BASE, {"enclave": {"runtimeClasName": "kata-qemu-snp"}}),
    "unknown setting": merge(BASE, {"enclave": {"settings": {"kbs_key": ["00"]}}}),
    "limits without memory": merge(BASE, {"kbs": {"resources": {"limits": {"memory": None}}}}),
    "unknown group": merge(BASE, {"ingress": {"enabled": True}}),
    "quote in the repository": merge(BASE, {"enclave": {"image": {
        "repository": "registry.example/x') || true || ('"}}}),
}
SCHEMA_ERROR = "don't meet the specifications of the schema"


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every variant with the chart as shipped, and the refused ones also with a copy of the
    chart without its values schema, so the templates' own refusals are shown to hold alone."""
    bare = tmp_path_factory.mktemp("chart") / "medclave"
    shutil.copytree(CHART, bare)
    (bare / "values.schema.json").unlink()
    variants = {**VARIANTS, **{f"refused:{k}": v for k, (v, _) in REFUSED.items()},
                **{f"schema:{k}": v for k, v in SCHEMA_REFUSED.items()}}
    out: dict[str, Any] = {}
    for name, chart, lint_values, these in (
            ("shipped", CHART, VARIANTS["full"], variants),
            ("bare", bare, None, {k: v for k, v in variants.items() if k.startswith("refused:")})):
        request = {"chart": str(chart), "release": RELEASE, "namespace": NAMESPACE,
                   "lint_values": lint_values, "variants": these}
        proc = subprocess.run([sys.executable, "-m", "tests.deploy.render"], cwd=ROOT,
                              input=json.dumps(request), capture_output=True, text=True,
                              timeout=120, env=os.environ.copy(), check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[name] = json.loads(proc.stdout)
    return out


def objects_of(files: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in sorted(files):
        for doc in yaml.safe_load_all(files[name]):
            if doc:
                docs.append(doc)
    return docs


@pytest.fixture(scope="session")
def variants(rendered: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in VARIANTS:
        result = rendered["shipped"]["variants"][name]
        assert result["ok"], f"{name}: {result.get('error')}"
        out[name] = objects_of(result["files"])
    return out
