"""C2SP signed notes, checkpoints and cosignatures: known answers from other implementations,
round trips, one flipped byte, and random input."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.audit.note import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    cosign,
    parse_checkpoint,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_note,
)
from medclave.errors import AuditError, CryptoError, MedclaveError
from tests.audit._builders import ORIGIN
from tests.conftest import flip

# golang.org/x/mod/sumdb/note: the package's documented example key and signed note.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()

# A real checkpoint of the arche2025h1 staging CT log (Ed25519 note key, plus an RFC 6962
# signature line that must be ignored) cosigned by public witnesses, among them remora.
ARCHE_VKEY = (
    "arche2025h1.staging.ct.transparency.dev+ba2f06c0+AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f"
)
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
ARCHE_NOTE = """arche2025h1.staging.ct.transparency.dev
1432088532
U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=

— arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=
— arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=
— transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==
— witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==
— remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==
— witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==
""".encode()  # noqa: E501


def test_go_note_known_answer() -> None:
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    assert verifier.vkey() == GO_VKEY
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.skey() == GO_SKEY and signer.verifier == verifier
    note = parse_note(GO_NOTE)
    assert note.text == GO_TEXT and note.to_bytes() == GO_NOTE
    verify_note(note, verifier)
    # Ed25519 is deterministic: signing the text again gives the published note byte for byte.
    from medclave.audit.note import Note, sign_note

    assert Note(GO_TEXT, (sign_note(GO_TEXT, signer),)).to_bytes() == GO_NOTE
    with pytest.raises(AuditError):
        verify_note(parse_note(GO_NOTE.replace(b"cryptography", b"cryptographY")), verifier)


def test_real_cosigned_checkpoint() -> None:
    log = NoteVerifier.from_vkey(ARCHE_VKEY)
    remora = NoteVerifier.from_vkey(REMORA_VKEY)
    assert remora.alg == ALG_COSIGNATURE_V1
    got = verify_checkpoint(ARCHE_NOTE, log, witnesses=[remora], quorum=1)
    assert got.checkpoint.size == 1432088532
    assert [c.name for c in got.cosignatures] == ["remora.n621.de"]
    assert got.cosignatures[0].timestamp > 1_700_000_000
    clobbered = ARCHE_NOTE.replace(b"1432088532", b"1432088533")
    with pytest.raises(AuditError) as err:
        verify_checkpoint(clobbered, log)
    assert err.value.code == "audit.checkpoint_signature_invalid"
    # The witness's line, one byte changed inside its signature, rejects the note.
    at = ARCHE_NOTE.index(b"2net5w") + 40
    with pytest.raises(AuditError) as err:
        verify_checkpoint(flip(ARCHE_NOTE, at, 0x02), log, witnesses=[remora], quorum=1)
    assert err.value.code in {"audit.cosignature_invalid", "audit.checkpoint_invalid"}


def test_known_key_ids_and_plus_in_base64() -> None:
    for vkey in (
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
        REMORA_VKEY,
    ):
        assert NoteVerifier.from_vkey(vkey).vkey() == vkey
    for bad in (
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong ID
        "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # upper case
        "example.com/foo+530d903a",
        "a b+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
    ):
        with pytest.raises(CryptoError):
            NoteVerifier.from_vkey(bad)


def test_checkpoint_round_trip_and_one_flipped_byte(log_signer: NoteSigner) -> None:
    cp = Checkpoint(ORIGIN, 20852163, bytes(range(32)), ("ext line",))
    note = sign_checkpoint(cp, log_signer)
    assert verify_checkpoint(note, log_signer.verifier).checkpoint == cp
    for offset in range(len(note)):
        with pytest.raises(MedclaveError):
            verify_checkpoint(flip(note, offset), log_signer.verifier)


def test_checkpoint_refusals(log_signer: NoteSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, bytes(32)), log_signer)
    with pytest.raises(AuditError):  # another origin than the key's name
        verify_checkpoint(note, log_signer.verifier, origin="other.example/log")
    with pytest.raises(AuditError):  # a stranger's key
        verify_checkpoint(note, NoteSigner.generate(ORIGIN).verifier)
    for text in ("o\n01\n" + "A" * 43 + "=\n", "o\n1\nAAAA\n", "\n1\n" + "A" * 43 + "=\n",
                 "o\n1\n" + "A" * 43 + "=\n\n", "o\n-1\n" + "A" * 43 + "=\n",
                 "o\n18446744073709551616\n" + "A" * 43 + "=\n", "o\n1\n"):
        with pytest.raises(AuditError):
            parse_checkpoint(text)


def test_cosign_and_quorum(log_signer: NoteSigner, witness_signer: NoteSigner) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, bytes(32)), log_signer)
    cosigned = cosign(note, witness_signer, 1_700_000_000)
    got = verify_checkpoint(cosigned, log_signer.verifier, witnesses=[witness_signer.verifier],
                            quorum=1)
    assert got.cosignatures[0].timestamp == 1_700_000_000
    other = NoteSigner.generate("witness.example/w2", ALG_COSIGNATURE_V1)
    with pytest.raises(AuditError) as err:
        verify_checkpoint(cosigned, log_signer.verifier,
                          witnesses=[witness_signer.verifier, other.verifier], quorum=2)
    assert err.value.code == "audit.cosignature_invalid"
    with pytest.raises(AuditError):
        verify_checkpoint(note, log_signer.verifier, witnesses=[witness_signer.verifier], quorum=1)
    # A cosignature over one checkpoint does not carry to another.
    sig_line = cosigned.decode().splitlines()[-1]
    other_note = sign_checkpoint(Checkpoint(ORIGIN, 6, bytes(32)), log_signer).decode()
    grafted = (other_note + sig_line + "\n").encode()
    with pytest.raises(AuditError) as err:
        verify_checkpoint(grafted, log_signer.verifier, witnesses=[witness_signer.verifier],
                          quorum=1)
    assert err.value.code == "audit.cosignature_invalid"


def test_sign_refuses_wrong_key_types(log_signer: NoteSigner, witness_signer: NoteSigner) -> None:
    cp = Checkpoint(ORIGIN, 1, bytes(32))
    with pytest.raises(CryptoError):
        sign_checkpoint(cp, witness_signer)
    with pytest.raises(CryptoError):
        cosign(sign_checkpoint(cp, log_signer), log_signer, 1)


_SIGNER = NoteSigner.generate(ORIGIN)
_NOTE = sign_checkpoint(Checkpoint(ORIGIN, 42, bytes(range(32))), _SIGNER)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_verify(data: bytes) -> None:
    with pytest.raises(MedclaveError):
        verify_checkpoint(data, _SIGNER.verifier)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_note_never_verifies(data: st.DataObject) -> None:
    note = bytearray(_NOTE)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        at = data.draw(st.integers(0, len(note) - 1))
        if op == "flip":
            note[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            note.insert(at, data.draw(st.integers(0, 255)))
        else:
            del note[at]
    if bytes(note) == _NOTE:
        return
    try:
        got = verify_checkpoint(bytes(note), _SIGNER.verifier)
    except MedclaveError:
        return
    # Only a change outside the signed text and the log's line may pass (e.g. nothing else
    # exists here), so anything that verifies must be the same checkpoint.
    assert got.checkpoint == Checkpoint(ORIGIN, 42, bytes(range(32)))
    assert base64.b64encode(got.checkpoint.root)
