"""GCE vTPM attestation (the registry's ``gce-tpm`` platform): go-tpm-tools ``attest.Attestation``.

The evidence is the serialized protobuf go-tpm-tools' ``client.Attest`` produces on a GCE
Shielded or Confidential VM (``proto/attest.proto``, read with the bounded reader in ``pb``):
1 ``ak_pub`` (TPMT_PUBLIC), 2 ``quotes`` (each 1 TPMS_ATTEST, 2 TPMT_SIGNATURE, 3 PCRs {1 hash
algorithm, 2 map index -> value}), 3 the TCG event log, 6 ``ak_cert`` (DER), 7 intermediates.
The TPM2 structures and the quote checks are the Azure vTPM ones (``vtpm.tpm2``). The checks:

0. the protobuf parses, every field bounded;
1. the AK certificate chains, through intermediates from the evidence or ``--cert``, to a
   Google EK/AK CA root pinned here, valid at ``options.now``;
2. ``ak_pub`` is the certificate's key and a restricted signing key fixed to its TPM (it signs
   only TPM-generated structures, TPM 2.0 Part 1 §25.2.2);
3. every quote: TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE signed by the AK, its pcrDigest the hash
   of the reported PCR values in selection order, the bank the one the PCRs name; with an
   expected nonce, ``extraData`` equals it (an empty extraData never does).

The event log is carried but not replayed here (the PCRs are what the policy reads). A vTPM
quote is made by the hypervisor's vTPM: on a Shielded VM the host is trusted, so the default
policy does not name this platform; a policy must (``platforms = ["gce-tpm"]``).
``extraData`` carries the Medclave binding (``report_data``) in an evidence bundle.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from medclave.attestation.core import (
    CheckLog,
    Claims,
    Verification,
    VerifyOptions,
    sha256_hex,
)
from medclave.attestation.gcp import pb
from medclave.attestation.vtpm import tpm2
from medclave.attestation.x509chain import (
    MAX_CHAIN_LENGTH,
    fingerprint,
    load_der_cached,
    verify_chain_cached,
)
from medclave.errors import AttestationError

PLATFORM = "gce-tpm"
# Google's vTPM EK/AK CA roots (go-tpm-tools server/ca-certs): SHA-256 of the DER.
GOOGLE_AK_ROOTS = frozenset({
    # CN=tpm_ek_v1_cloud_host_root-signer-0-2018-04-06T10:58:26-07:00 (2018-04-06..2118)
    "9bd5285f8fb18502a7947e621ffd470266f49fcd3b73e19a190f690ad32a7caf",
    # CN=EK/AK CA Root, OU=Google Cloud, O=Google LLC (2022-07-08..2122)
    "594759594b9b61524f6c8ef668f7177f7b9066bc0674f2f49fe9e052be78beb2",
})
MAX_ATTESTATION_BYTES = 512 * 1024
MAX_QUOTES = 4
MAX_INTERMEDIATES = 4
_BANK_SIZE = {tpm2.TPM_ALG_SHA1: 20, tpm2.TPM_ALG_SHA256: 32, tpm2.TPM_ALG_SHA384: 48,
              tpm2.TPM_ALG_SHA512: 64}


class Quote:
    def __init__(self, message: bytes, signature: tpm2.TpmSignature, bank: int,
                 values: list[bytes]) -> None:
        self.message, self.signature, self.bank, self.values = message, signature, bank, values


class Evidence:
    def __init__(self, ak_pub: bytes, quotes: list[Quote], event_log: bytes, ak_cert: bytes,
                 intermediates: list[bytes]) -> None:
        self.ak_pub, self.quotes, self.event_log = ak_pub, quotes, event_log
        self.ak_cert, self.intermediates = ak_cert, intermediates

    def signed(self) -> bytes:
        """Every quoted TPMS_ATTEST, length-prefixed: what identifies the evidence."""
        return b"".join(len(q.message).to_bytes(4, "big") + q.message for q in self.quotes)


def _quote(blob: bytes) -> Quote:
    msg = pb.fields(blob)
    pcrs = pb.fields(pb.one_bytes(msg, 3, required=True))
    bank = pb.one_int(pcrs, 1)
    if bank not in _BANK_SIZE:
        raise AttestationError("attestation.malformed", f"PCR bank 0x{bank:04x} not supported")
    values: dict[int, bytes] = {}
    for entry in pb.repeated_bytes(pcrs, 2, maximum=tpm2.MAX_PCRS):
        kv = pb.fields(entry)
        index, value = pb.one_int(kv, 1), pb.one_bytes(kv, 2)
        if index >= tpm2.MAX_PCRS or index in values or len(value) != _BANK_SIZE[bank]:
            raise AttestationError("attestation.malformed", f"PCR {index} entry is malformed")
        values[index] = value
    return Quote(pb.one_bytes(msg, 1, required=True),
                 tpm2.parse_signature(pb.one_bytes(msg, 2, required=True)),
                 bank, [values[i] for i in sorted(values)])


def decode(data: bytes) -> Evidence:
    if len(data) > MAX_ATTESTATION_BYTES:
        raise AttestationError("attestation.malformed", "attestation is too large")
    msg = pb.fields(data)
    quotes = [_quote(q) for q in pb.repeated_bytes(msg, 2, maximum=MAX_QUOTES)]
    if not quotes:
        raise AttestationError("attestation.malformed", "the attestation holds no quote")
    return Evidence(pb.one_bytes(msg, 1, required=True), quotes, pb.one_bytes(msg, 3),
                    pb.one_bytes(msg, 6),
                    pb.repeated_bytes(msg, 7, maximum=MAX_INTERMEDIATES))


def looks_like_attestation(data: bytes) -> bool:
    """Field 1 (ak_pub) first, a TPMT_PUBLIC of an RSA or ECC key, then a quote."""
    if not data.startswith(b"\x0a") or len(data) > MAX_ATTESTATION_BYTES:
        return False
    try:
        ev = decode(data)
        tpm2.parse_public(ev.ak_pub)
    except AttestationError:
        return False
    return True


def _claims(ev: Evidence, banks: dict[str, dict[str, str]], extra: bytes,
            attest: tpm2.QuoteAttest | None) -> dict[str, Any]:
    return {
        "pcrs": banks.get("sha256", {}),
        "pcr_banks": banks,
        "nonce": extra.hex(),
        "report_data": extra.hex(),
        "tpm": attest.claims() if attest is not None else {},
        "event_log_bytes": len(ev.event_log),
        "event_log_replayed": False,
    }


def parse(data: bytes) -> Claims:
    ev = decode(data)
    banks: dict[str, dict[str, str]] = {}
    attest = None
    for q in ev.quotes:
        attest = tpm2.parse_attest(q.message)
        banks.update(tpm2.unverified_pcrs(attest, q.values))
    return _claims(ev, banks, attest.extra_data if attest else b"", attest)


def signed_bytes(data: bytes) -> bytes:
    return decode(data).signed()


def _chain(leaf: x509.Certificate, pool: list[x509.Certificate]) -> list[x509.Certificate]:
    chain = [leaf]
    while chain[-1].issuer != chain[-1].subject and len(chain) < MAX_CHAIN_LENGTH:
        issuer = next((c for c in pool if c.subject == chain[-1].issuer and c not in chain), None)
        if issuer is None:
            break
        chain.append(issuer)
    return chain


def verify(data: bytes, options: VerifyOptions) -> Verification:
    log = CheckLog()
    try:
        ev = decode(data)
        public = tpm2.parse_public(ev.ak_pub)
        if not ev.ak_cert:
            raise AttestationError("attestation.certificate_missing",
                                   "the attestation carries no AK certificate")
        leaf = load_der_cached(ev.ak_cert)
        pool = [*(load_der_cached(c) for c in ev.intermediates),
                *options.endorsements.certificates]
    except AttestationError as exc:
        raise log.fail("0. parse attestation", exc.code, exc.detail) from exc
    log.ok("0. parse attestation", f"{len(ev.quotes)} quote(s), event log {len(ev.event_log)} "
                                   "bytes (not replayed)")
    roots = options.trusted_roots if options.trusted_roots is not None else GOOGLE_AK_ROOTS
    chain = _chain(leaf, pool)
    verify_chain_cached(chain, trusted_roots=roots, now=options.now, log=log,
                        name="1. AK certificate chain")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    cert_key = leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
    if public.key.public_bytes(serialization.Encoding.DER, spki) != cert_key:
        raise log.fail("2. AK public area", "attestation.chain_invalid",
                       "ak_pub is not the AK certificate's key")
    if not public.restricted_signing:
        raise log.fail("2. AK public area", "attestation.signature_invalid",
                       "the AK is not a restricted signing key fixed to its TPM")
    log.ok("2. AK public area", "ak_pub = the certificate's key; fixedTPM, restricted, sign")
    banks: dict[str, dict[str, str]] = {}
    attest: tpm2.QuoteAttest | None = None
    for n, q in enumerate(ev.quotes):
        sub = CheckLog()
        try:
            vq = tpm2.verify_quote(q.message, q.signature, public.key, q.values,
                                   expected_nonce=options.expected_nonce, log=sub)
        except AttestationError as exc:
            for c in exc.checks[:-1]:
                log.ok(f"3. quote {n}: {c.name}", c.detail)
            raise log.fail(f"3. quote {n}: {exc.checks[-1].name if exc.checks else 'quote'}",
                           exc.code, exc.detail) from exc
        selected = {s.hash_alg for s in vq.attest.selections}
        if selected != {q.bank}:
            raise log.fail(f"3. quote {n}", "attestation.pcr_mismatch",
                           "the quote selects another bank than its PCR values name")
        if attest is not None and vq.attest.extra_data != attest.extra_data:
            raise log.fail(f"3. quote {n}", "attestation.nonce_mismatch",
                           "the quotes answer different nonces")
        for c in sub.checks:
            log.ok(f"3. quote {n}: {c.name}", c.detail)
        banks.update(vq.pcr_banks)
        attest = vq.attest
    assert attest is not None  # decode() refuses an attestation without quotes
    return Verification(
        platform=PLATFORM,
        claims=_claims(ev, banks, attest.extra_data, attest),
        checks=log.checks,
        secure=fingerprint(chain[-1]) in GOOGLE_AK_ROOTS,
        warnings=("a GCE vTPM quote is made by Google's hypervisor: on a Shielded VM the host is "
                  "trusted; the event log is not replayed",),
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(ev.signed()),
    )
