"""Appraisal policy: the reference values a relying party accepts, and the appraisal itself.

A policy is a TOML or JSON document. It refuses to be empty: it must name the platforms it accepts,
and ``sim`` is accepted only when named (it protects nothing). Reference values are per platform,
keyed by claim path (``measurement``, ``policy_bits.smt``, ``reported_tcb_parts.snp``) so the same
rules read the same over every platform's claims::

    platforms = ["sev-snp", "tdx"]
    allow_debug = false
    model_digests = ["b179c952…"]
    kbs_keys = ["3f0c…"]               # the key brokers the enclave may take keys from
    audio_retention = "none"           # an enclave that takes audio must keep none of it
    speech_sandbox = "landlock"        # ... and transcribe in a worker that cannot write files

    [tcb]
    refuse = ["OutOfDate", "OutOfDateConfigurationNeeded", "Revoked", "NoMatch"]
    require_known = false

    [platform.sev-snp.reference_values]
    measurement = ["7a1e5c26…"]
    "policy_bits.migrate_ma" = [false]

    [platform.sev-snp.minimums]
    "reported_tcb_parts.snp" = 8

GPUs verified beside a CPU report (``claims["gpu"]``, see ``verifier.verify_bundle``) satisfy
``require_gpu = true``, as NVIDIA evidence appraised on its own does; each is read against the
``[platform.nvidia]`` reference values, minimums and rules too, violations named by claim path
(``gpu[0].driver_version``), and one that does not chain to NVIDIA's root is refused.

Appraisal never stops at the first broken rule: every violation is reported at once, and the
policy digest (SHA-256 of its canonical JSON) goes into every result.

``token_issuers`` lists the identity providers (issuer, and JWKS URL or ``sha256:`` digest of a
static key set) whose tokens the enclave may accept; the runtime states the ones it does, and an
enclave that states another, or none (it checks no token), is refused: otherwise the operator
could point the enclave at an issuer of its own and act as any user::

    [[token_issuers]]
    issuer = "https://idp.st-marys.org"
    jwks = "https://idp.st-marys.org/jwks.json"

``kbs_keys`` lists the fingerprints (SHA-256 of the raw Ed25519 public key, hex) of the key
brokers a relying party lets the enclave take keys from. The enclave's runtime, which report_data
binds, states every broker key it accepts release answers from (``runtime.kbs_keys``); each must
be in the list, and an enclave that states none is refused: a broker it trusts could hand it a
commitment or model key of the operator's choosing.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medclave.attestation import platform_rules
from medclave.attestation.core import Verification, Violation
from medclave.crypto.canonical import canonical_sha256
from medclave.errors import InputError, PolicyError

REAL_PLATFORMS: tuple[str, ...] = ("sev-snp", "tdx", "nvidia", "az-snp-vtpm", "az-tdx-vtpm", "tpm",
                                   "nitro", "sgx", "gcp-cs", "cca")
# Named only by a policy that chooses them: a GCE vTPM quote is the hypervisor's word.
OPT_IN_PLATFORMS: tuple[str, ...] = ("gce-tpm",)
KNOWN_PLATFORMS: tuple[str, ...] = (*REAL_PLATFORMS, *OPT_IN_PLATFORMS, "sim")
DEFAULT_REFUSED_TCB: tuple[str, ...] = (
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "NoMatch",
)
MAX_POLICY_BYTES = 256 * 1024


class TcbRules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    refuse: tuple[str, ...] = DEFAULT_REFUSED_TCB
    # True: an unknown TCB status (no collateral given) is refused too.
    require_known: bool = False


class PlatformRules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reference_values: dict[str, list[Any]] = Field(default_factory=dict)
    minimums: dict[str, int] = Field(default_factory=dict)
    # The platform's own rule set (sevsnp.SnpRules, tdx.TdxRules, nvidia.NvidiaPolicy), by field.
    rules: dict[str, Any] = Field(default_factory=dict)


class TokenIssuer(BaseModel):
    """An identity provider whose tokens the enclave may accept, and where its keys come from:
    the JWKS URL, or ``sha256:HEX`` of a static key set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1, max_length=512)
    jwks: str = Field(min_length=1, max_length=2048)


class ReleaseLogRule(BaseModel):
    """``[release_log]``: accept a measurement published in this release log (audit/release.py)
    with at least ``quorum`` of ``witnesses``' cosignatures, signed by one of ``signers`` (note
    verifier keys). Enforced by the callers that read the runtime's release proof (the client,
    the key broker); every other caller refuses such a policy (``policy.release_not_logged``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    log_key: str = Field(min_length=1, max_length=512)
    witnesses: tuple[str, ...] = Field(default=(), max_length=32)
    quorum: int = Field(default=0, ge=0, le=32)
    signers: tuple[str, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _quorum_reachable(self) -> ReleaseLogRule:
        if self.quorum > len(self.witnesses):
            raise ValueError("release_log quorum exceeds the witnesses listed")
        return self


_LATER_FIELDS = ("release_log", "audio_retention", "speech_sandbox", "speech_model_digests")


class AppraisalPolicy(BaseModel):
    """Reference values. Construct with :func:`load_policy` or :func:`default_policy`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    platforms: tuple[str, ...]
    allow_debug: bool = False
    model_digests: tuple[str, ...] = ()
    kbs_keys: tuple[str, ...] = ()
    token_issuers: tuple[TokenIssuer, ...] = ()
    max_evidence_age_seconds: int | None = Field(default=None, gt=0)
    require_gpu: bool = False
    # Speech (issue 14): what an enclave that takes audio must state in its runtime. Checked by
    # the client (medclave.client.verify) on every attestation; unset: no requirement.
    audio_retention: Literal["none"] | None = None
    speech_sandbox: Literal["landlock"] | None = None
    speech_model_digests: tuple[str, ...] = ()
    tcb: TcbRules = Field(default_factory=TcbRules)
    platform: dict[str, PlatformRules] = Field(default_factory=dict)
    release_log: ReleaseLogRule | None = None

    @field_validator("kbs_keys")
    @classmethod
    def _kbs_keys_hex(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(v.lower() for v in value)
        if any(len(v) != 64 or any(c not in "0123456789abcdef" for c in v) for v in out):
            raise ValueError("kbs_keys are SHA-256 fingerprints in hex")
        return out

    @field_validator("platforms")
    @classmethod
    def _platforms_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("policy.empty")
        unknown = sorted(set(value) - set(KNOWN_PLATFORMS))
        if unknown:
            raise ValueError(f"unknown platforms {unknown}; known: {list(KNOWN_PLATFORMS)}")
        return value

    @model_validator(mode="after")
    def _platform_rules_valid(self) -> AppraisalPolicy:
        for name, section in self.platform.items():
            if name not in KNOWN_PLATFORMS:
                raise ValueError(f"rules for unknown platform {name!r}")
            if section.rules:
                platform_rules.build(name, section.rules)  # raises ValueError/TypeError when bad
        return self

    @model_validator(mode="after")
    def _has_a_digest(self) -> AppraisalPolicy:
        """The digest is over RFC 8785 bytes: a value without them (an integer beyond 2^53) is
        refused while the policy is read (``policy.invalid``), not when its digest is taken."""
        try:
            self.digest()
        except InputError as exc:
            raise ValueError(exc.detail) from exc
        return self

    def digest(self) -> str:
        body = self.model_dump(mode="json")
        # Fields added later are left out while unset, so existing policies keep their digest.
        for name in _LATER_FIELDS:
            if body.get(name) in (None, []):
                body.pop(name, None)
        return canonical_sha256(body).hex()

    @property
    def allows_sim(self) -> bool:
        return "sim" in self.platforms


def default_policy() -> AppraisalPolicy:
    """Every real platform, any measurement; refuses sim, debug and a TCB known to be bad."""
    return AppraisalPolicy(name="medclave-default", platforms=REAL_PLATFORMS)


def parse_policy(data: bytes, *, fmt: str | None = None) -> AppraisalPolicy:
    """A policy from TOML or JSON bytes (``fmt`` 'toml'/'json', else guessed from content)."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError("policy.invalid", "policy file too large")
    try:
        text = data.decode("utf-8")
        if fmt == "json" or (fmt is None and text.lstrip().startswith("{")):
            raw = json.loads(text)
        else:
            raw = tomllib.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PolicyError("policy.invalid", f"not valid TOML or JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise PolicyError("policy.invalid", "a policy is an object")
    try:
        return AppraisalPolicy.model_validate(raw)
    except ValidationError as exc:
        empty = any("policy.empty" in str(e.get("msg", "")) for e in exc.errors())
        if empty or "platforms" not in raw:
            raise PolicyError("policy.empty",
                              "the policy names no platform: it would accept nothing") from exc
        raise PolicyError("policy.invalid", _first_error(exc)) from exc


def load_policy(path: Path) -> AppraisalPolicy:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError("policy.invalid", f"cannot read policy {path.name}: {exc.strerror}") from exc
    return parse_policy(data, fmt="json" if path.suffix == ".json" else None)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg', 'invalid')}"


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """``claims['a']['b']`` for ``'a.b'``; a missing step gives None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return bool(a == b) and type(a) is type(b)


class Appraisal(BaseModel):
    """The outcome of appraising one verification against one policy."""

    model_config = ConfigDict(frozen=True)

    platform: str
    policy_name: str
    policy_digest: str
    violations: tuple[dict[str, str], ...] = ()
    # Per claim group: "affirming" | "warning" | "contraindicated" | "none" (EAR vocabulary).
    status: dict[str, str] = Field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return not self.violations


def appraisal_of(
    verification: Verification,
    policy: AppraisalPolicy,
    *,
    now: datetime,
    evidence_time: datetime | None = None,
    model_digest: str | None = None,
    kbs_keys: object = None,
    token_issuers: object = None,
    release_proven: bool = False,
) -> Appraisal:
    """Every rule of ``policy`` against ``verification``; never raises for a refusal.

    ``release_proven``: the caller checked the policy's ``release_log`` rule against the
    runtime's release proof (audit/release.py); a caller that did not is refused.

    ``model_digest`` and ``kbs_keys`` are what the attested runtime states (read by the caller,
    which knows the runtime's shape); ``kbs_keys`` as found there, validated here."""
    v: list[Violation] = []
    claims = verification.claims
    status: dict[str, str] = {}

    gpus = gpu_claims(verification)
    if verification.platform not in policy.platforms:
        why = "sim is not a TEE and protects nothing" if verification.platform == "sim" else ""
        v.append(Violation("policy.platform_not_allowed", "platform",
                           f"{verification.platform} not in {list(policy.platforms)} {why}".strip()))
    elif not verification.secure and verification.platform != "sim":
        # Verified, but to a root the caller supplied (trusted_roots), not the vendor's: naming
        # a real platform accepts that vendor's hardware, never a chain some config pinned.
        which = f"{verification.platform} evidence" + (" or a GPU beside it" if gpus else "")
        v.append(Violation("policy.platform_not_allowed", "hardware",
                           f"{which} does not chain to the vendor's root: not genuine hardware"))
    for i, gpu in enumerate(gpus):
        if gpu.get("secure") is not True:
            # Even beside sim: a GPU under a caller's root is no GPU confidential computing.
            v.append(Violation("policy.platform_not_allowed", f"gpu[{i}]",
                               "the GPU evidence does not chain to NVIDIA's device root: "
                               "not a genuine GPU"))
    status["hardware"] = "affirming" if verification.secure else "contraindicated"

    if policy.release_log is not None and not release_proven:
        v.append(Violation("policy.release_not_logged", "release_proof",
                           "the policy requires a published release and it was not checked"))

    debug = _debug_of(claims)
    if debug and not policy.allow_debug:
        v.append(Violation("policy.debug_forbidden", "debug", "the guest allows debugging"))
    status["configuration"] = "contraindicated" if debug else "affirming"

    tcb = verification.tcb_status
    if tcb in policy.tcb.refuse:
        v.append(Violation("policy.tcb_too_low", "tcb_status", f"TCB status {tcb} is refused"))
    elif tcb == "unknown" and policy.tcb.require_known:
        v.append(Violation("policy.tcb_too_low", "tcb_status",
                           "TCB status unknown (no collateral) and the policy requires it"))
    status["tcb"] = ("contraindicated" if tcb in policy.tcb.refuse
                     else "none" if tcb == "unknown" else
                     "affirming" if tcb == "UpToDate" else "warning")

    rules = policy.platform.get(verification.platform)
    exec_ok = True
    if rules is not None:
        found, exec_ok = _platform_violations(verification.platform, rules, claims,
                                              tcb_status=verification.tcb_status)
        v.extend(found)
    gpu_rules = policy.platform.get("nvidia")
    if gpu_rules is not None:
        # The same [platform.nvidia] rules read over each GPU beside the CPU, claim paths
        # prefixed so a refusal names the GPU ("gpu[0].driver_version").
        for i, gpu in enumerate(gpus):
            found, ok = _platform_violations("nvidia", gpu_rules, gpu, tcb_status="unknown")
            exec_ok = exec_ok and ok
            v.extend(Violation(x.code, f"gpu[{i}].{x.claim}", x.detail) for x in found)
    judged = rules is not None or (gpu_rules is not None and bool(gpus))
    status["executables"] = (
        "contraindicated" if not exec_ok else "affirming" if judged else "none"
    )

    if policy.model_digests:
        if model_digest is None or model_digest.lower() not in {d.lower() for d in policy.model_digests}:
            v.append(Violation("policy.model_not_allowed", "model_digest",
                               f"model {model_digest or '(none)'} is not an allowed model"))
            status["sourced-data"] = "contraindicated"
        else:
            status["sourced-data"] = "affirming"

    if policy.kbs_keys:
        stated = (list(kbs_keys) if isinstance(kbs_keys, (list, tuple))
                  and all(isinstance(k, str) for k in kbs_keys) else [])
        extra = sorted({k.lower() for k in stated} - set(policy.kbs_keys))
        if not stated or extra:
            v.append(Violation("policy.kbs_key_not_allowed", "kbs_keys",
                               f"the enclave trusts broker keys {extra} the policy does not name"
                               if extra else "the enclave states no trusted broker key"))

    if policy.token_issuers:
        allowed = {(t.issuer, t.jwks) for t in policy.token_issuers}
        issuers = _issuer_pairs(token_issuers)
        if not issuers:
            v.append(Violation("policy.token_issuer_not_allowed", "token_issuers",
                               "the enclave states no token issuer: it checks no token"))
        elif issuers - allowed:
            v.append(Violation("policy.token_issuer_not_allowed", "token_issuers",
                               f"the enclave accepts tokens from {sorted(issuers - allowed)}, "
                               "which the policy does not name"))

    if policy.require_gpu and verification.platform != "nvidia" and not gpus:
        # Satisfied by NVIDIA evidence itself or by a bundle whose GPU entries verified, each
        # bound to the CPU report (verifier.verify_bundle); anything else proves no GPU.
        v.append(Violation("policy.refused", "gpu",
                           "the policy requires verified GPU evidence and none was appraised"))

    if policy.max_evidence_age_seconds is not None:
        if evidence_time is None:
            # A freshness limit the caller cannot check is not met (fail closed).
            v.append(Violation("policy.evidence_stale", "evidence_time",
                               "the evidence time is unknown, so its age cannot be checked "
                               f"against the limit of {policy.max_evidence_age_seconds}s"))
        else:
            age = (now - evidence_time).total_seconds()
            if age > policy.max_evidence_age_seconds or age < -60:
                v.append(Violation("policy.evidence_stale", "evidence_time",
                                   f"evidence is {age:.0f}s old, limit "
                                   f"{policy.max_evidence_age_seconds}s"))

    return Appraisal(
        platform=verification.platform,
        policy_name=policy.name,
        policy_digest=policy.digest(),
        violations=tuple(x.to_dict() for x in v),
        status=status,
    )


def _issuer_pairs(value: object) -> set[tuple[str, str]]:
    """``(issuer, jwks)`` of each well-formed entry a runtime states; anything else counts as
    a pair no policy names (fail closed)."""
    if not isinstance(value, (list, tuple)):
        return set()
    out: set[tuple[str, str]] = set()
    for item in value:
        if (isinstance(item, Mapping) and isinstance(item.get("issuer"), str)
                and isinstance(item.get("jwks"), str)):
            out.add((item["issuer"], item["jwks"]))
        else:
            out.add(("(malformed)", repr(item)[:64]))
    return out


def gpu_claims(verification: Verification) -> list[Mapping[str, Any]]:
    """The claims of each GPU verified beside a CPU report (``claims["gpu"]``), else []."""
    if verification.platform == "nvidia":
        return []
    entries = verification.claims.get("gpu")
    if not isinstance(entries, list):
        return []
    return [g for g in entries if isinstance(g, Mapping)]


def _platform_violations(platform: str, rules: PlatformRules, claims: Mapping[str, Any], *,
                         tcb_status: str) -> tuple[list[Violation], bool]:
    """Reference values, minimums and the platform's own rules over ``claims``; the bool is
    False when an executable (measurement, version, manifest) rule broke."""
    v: list[Violation] = []
    exec_ok = True
    for path, allowed in rules.reference_values.items():
        actual = claim_at(claims, path)
        if not any(_same(actual, a) for a in allowed):
            exec_ok = False
            v.append(Violation("attestation.measurement_mismatch", path,
                               f"{actual!r} is not an accepted reference value"))
    for path, minimum in rules.minimums.items():
        actual = claim_at(claims, path)
        if not isinstance(actual, int) or isinstance(actual, bool) or actual < minimum:
            v.append(Violation("policy.tcb_too_low", path, f"{actual!r} below minimum {minimum}"))
    if rules.rules:
        found = platform_rules.check(platform, rules.rules, claims, tcb_status=tcb_status)
        exec_ok = exec_ok and not found
        v.extend(found)
    return v, exec_ok


def appraise(
    verification: Verification,
    policy: AppraisalPolicy,
    *,
    now: datetime,
    evidence_time: datetime | None = None,
    model_digest: str | None = None,
    kbs_keys: object = None,
    token_issuers: object = None,
    release_proven: bool = False,
) -> Appraisal:
    """Like :func:`appraisal_of`, but raises :class:`PolicyError` listing every violation."""
    result = appraisal_of(verification, policy, now=now, evidence_time=evidence_time,
                      model_digest=model_digest, kbs_keys=kbs_keys, token_issuers=token_issuers,
                      release_proven=release_proven)
    if result.violations:
        raise_refusal(result.violations)
    return result


def raise_refusal(violations: Sequence[Mapping[str, str]]) -> None:
    codes = {x["code"] for x in violations}
    # One specific code when one rule broke; the umbrella code when several did.
    code = next(iter(codes)) if len(codes) == 1 else "policy.refused"
    detail = "; ".join(f"{x['claim']}: {x['detail']}" for x in violations)
    raise PolicyError(code, detail, violations=tuple(dict(x) for x in violations))


def _debug_of(claims: Mapping[str, Any]) -> bool:
    if claims.get("debug") is True:
        return True
    hardware = claims.get("hardware")
    return isinstance(hardware, Mapping) and hardware.get("debug") is True
