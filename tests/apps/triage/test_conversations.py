"""The triage chat end to end on 127.0.0.1 (a deterministic engine; the real model is driven by
the browser test): only the patient, with their share, reopens; the crisis response comes first
with the triage level; alerts carry only what the patient agreed to; nothing the services wrote
holds the conversation's words."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medclave.client.conversations import encode_share, new_share
from medclave.errors import MedclaveError
from tests.apps.triage.conftest import OperatorStore, proxy_for, sdk, start_triage
from tests.e2e.helpers import E2E_STORE, FAKE_ANSWER, Enclave, FakeEngine, Idp

# Words that appear nowhere else: the file sweep looks for them.
SECRET = "Quillfeather Marmaduke"
CRISIS = f"I keep thinking I want to kill myself, {SECRET} is the only one who knows"


@pytest.fixture(scope="module")
def triage(tmp_path_factory: pytest.TempPathFactory, idp: Idp) -> Iterator[Enclave]:
    enclave = start_triage(tmp_path_factory.mktemp("triage-enclave"), idp, FakeEngine())
    yield enclave
    enclave.stop()


def _code(exc: pytest.ExceptionInfo[MedclaveError]) -> str:
    return exc.value.code


def test_patient_chat_streams_the_crisis_response_first_and_reopens(
        triage: Enclave, idp: Idp) -> None:
    share = new_share()
    with sdk(triage, idp.token(roles=["patient"], sub="pat-ana")) as client:
        conv = client.conversations.create(share, share_with_provider="level")
        events = list(client.conversations.send(share, conv["id"], CRISIS, stream=True))
        receipt = client.last_receipt
        exported = client.conversations.export(share, conv["id"])
        listed = client.conversations.list(share)
    head = events[0]
    assert head["type"] == "triage" and head["triage"]["level"] in ("urgent", "emergency")
    assert "988" in head["crisis"]["message"] and "911" in head["crisis"]["message"]
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == FAKE_ANSWER
    assert events[-1]["type"] == "done" and events[-1]["saved"] is True
    assert receipt is not None  # the turn is an inference: audited, receipt verified
    turns = exported["turns"]
    assert [(t["role"], t["content"]) for t in turns] == [("user", CRISIS),
                                                          ("assistant", FAKE_ANSWER)]
    assert turns[0]["triage"] == head["triage"]["level"]
    assert exported["chain"] == events[-1]["chain"] == turns[-1]["chain"]
    assert [c["id"] for c in listed if c["readable"]] == [conv["id"]]


def test_a_routine_message_gets_no_crisis_response(triage: Enclave, idp: Idp) -> None:
    share = new_share()
    with sdk(triage, idp.token(roles=["patient"], sub="pat-ben")) as client:
        conv = client.conversations.create(share)
        whole = client.conversations.send(share, conv["id"], "I feel anxious about my exams")
    assert whole["triage"] == {"level": "routine"} and whole["crisis"] is None
    assert whole["reply"] == FAKE_ANSWER


def test_only_the_patient_with_the_share_opens(triage: Enclave, idp: Idp) -> None:
    share = new_share()
    with sdk(triage, idp.token(roles=["patient"], sub="pat-cleo")) as owner:
        conv = owner.conversations.create(share)["id"]
        owner.conversations.send(share, conv, "hello")
    attempts = {
        "clinician": (idp.token(roles=["clinician"], sub="dr-alice"), share, "auth.forbidden"),
        "admin": (idp.token(roles=["admin", "clinician"], sub="root"), share, "auth.forbidden"),
        "other patient": (idp.token(roles=["patient"], sub="pat-dan"), share,
                          "sealing.not_found"),
        "same patient, another share": (idp.token(roles=["patient"], sub="pat-cleo"),
                                        new_share(), "sealing.not_found"),
    }
    for who, (token, key, code) in attempts.items():
        with sdk(triage, token) as client:
            with pytest.raises(MedclaveError) as refused:
                client.conversations.export(key, conv)
            assert _code(refused) == code, who
            with pytest.raises(MedclaveError) as refused:
                client.conversations.send(key, conv, "let me in")
            assert _code(refused) == code, who
    # Another patient: an existing id reads exactly like one that does not exist.
    with sdk(triage, idp.token(roles=["patient"], sub="pat-dan")) as client:
        with pytest.raises(MedclaveError) as missing:
            client.conversations.export(share, "conv_" + "0" * 32)
        assert _code(missing) == "sealing.not_found"
    # The same patient without any share: refused with its own code, nothing opened.
    with sdk(triage, idp.token(roles=["patient"], sub="pat-cleo")) as client:
        answer = client.session.request("GET", f"/v1/medclave/conversations/{conv}",
                                        authorization=client.authorization())
        assert answer.status == 400 and b"sealing.share_missing" in answer.body
        assert len(client.conversations.export(share, conv)["turns"]) == 2


def test_a_patient_who_lost_the_share_can_still_delete(triage: Enclave, idp: Idp) -> None:
    share = new_share()
    with sdk(triage, idp.token(roles=["patient"], sub="pat-lost")) as client:
        conv = client.conversations.create(share)["id"]
        lost = new_share()  # a new browser: the old share is gone
        assert [(c["id"], c["readable"]) for c in client.conversations.list(lost)] == [
            (conv, False)]
        with pytest.raises(MedclaveError) as refused:
            client.conversations.export(lost, conv)
        assert _code(refused) == "sealing.not_found"
    with sdk(triage, idp.token(roles=["patient"], sub="pat-other")) as other:
        with pytest.raises(MedclaveError) as refused:
            other.conversations.delete(conv)
        assert _code(refused) == "sealing.not_found"
    with sdk(triage, idp.token(roles=["patient"], sub="pat-lost")) as client:
        client.conversations.delete(conv)
        assert client.conversations.list(lost) == []


def test_alerts_carry_only_what_the_patient_agreed_to(triage: Enclave, idp: Idp) -> None:
    with sdk(triage, idp.token(roles=["clinician"], sub="dr-eve")) as staff:
        before = staff.conversations.alerts()
    for consent, callback in (("nothing", None), ("level", None), ("callback", "+1 555 0100")):
        share = new_share()
        with sdk(triage, idp.token(roles=["patient"], sub=f"pat-{consent}")) as client:
            conv = client.conversations.create(share, share_with_provider=consent,
                                               callback=callback)
            client.conversations.send(share, conv["id"], CRISIS)
            with pytest.raises(MedclaveError) as refused:
                client.conversations.alerts()
            assert _code(refused) == "auth.forbidden"
    with sdk(triage, idp.token(roles=["clinician"], sub="dr-eve")) as staff:
        new = staff.conversations.alerts()[len(before):]
    assert [sorted(a) for a in new] == [["at", "id", "level"], ["at", "callback", "id", "level"]]
    assert new[1]["callback"] == "+1 555 0100"
    assert SECRET not in repr(new) and all(a["level"] != "routine" for a in new)


def test_through_the_proxy_and_delete(triage: Enclave, idp: Idp) -> None:
    server, session = proxy_for(triage)
    share = encode_share(new_share())
    auth = {"authorization": f"Bearer {idp.token(roles=['patient'], sub='pat-fay')}",
            "medclave-share": share}
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
            conv = http.post("/v1/medclave/conversations", json={}).json()["id"]
            with http.stream("POST", f"/v1/medclave/conversations/{conv}/turns",
                             json={"content": CRISIS, "stream": True}) as streamed:
                body = b"".join(streamed.iter_bytes())
            assert body.index(b'"type":"triage"') < body.index(b'"type":"delta"')
            assert http.get(f"/v1/medclave/conversations/{conv}").status_code == 200
            assert http.delete(f"/v1/medclave/conversations/{conv}").json()["deleted"]
            gone = http.get(f"/v1/medclave/conversations/{conv}")
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == "sealing.not_found"
    finally:
        server.stop()
        session.close()


def _written_since(start: float, roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                try:
                    if path.is_file() and not path.is_symlink() and \
                            path.stat().st_mtime >= start - 1:
                        yield path
                except OSError:
                    continue


def test_no_file_the_services_wrote_holds_the_conversation(
        tmp_path: Path, idp: Idp) -> None:
    start = time.time()
    folder = tmp_path / "sweep"
    enclave = start_triage(folder, idp, FakeEngine())
    share = new_share()
    try:
        server, session = proxy_for(enclave)
        try:
            with sdk(enclave, idp.token(roles=["patient"], sub="pat-sweep")) as client:
                conv = client.conversations.create(share, share_with_provider="callback",
                                                   callback="+1 555 0199")["id"]
                for _ in range(3):
                    list(client.conversations.send(share, conv, CRISIS, stream=True))
                assert len(client.conversations.export(share, conv)["turns"]) == 6
        finally:
            server.stop()
            session.close()
    finally:
        enclave.stop()
    roots = [folder, Path(tempfile.gettempdir())]
    if Path("/dev/shm").is_dir():
        roots.append(Path("/dev/shm"))
    swept = list(_written_since(start, roots))
    # The sweep sees the store: the SQLite file, or PostgreSQL's files (its server's temporary
    # folder, under the temporary directory swept).
    assert any(p.name == "conversations.sqlite3" if E2E_STORE != "postgresql" else
               p.parent.name == "pg_wal" for p in swept)
    words = [SECRET.encode(), b"kill myself", FAKE_ANSWER.encode(), b"555 0199",
             b"pat-sweep"]
    found = []
    for path in swept:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path}: {w!r}" for w in words if w in data]
    assert found == []


def test_the_operator_editing_the_store_is_caught_when_the_patient_reopens(
        triage: Enclave, idp: Idp) -> None:
    share = new_share()
    with sdk(triage, idp.token(roles=["patient"], sub="pat-gus")) as client:
        conv = client.conversations.create(share)["id"]
        for word in ("one", "two"):
            client.conversations.send(share, conv, word)
        # Drop the patient's second message and its answer.
        OperatorStore(triage).execute("DELETE FROM turns WHERE conversation=? AND idx>=2", conv)
        with pytest.raises(MedclaveError) as refused:
            client.conversations.export(share, conv)
        assert _code(refused) == "sealing.integrity_failed"
        with pytest.raises(MedclaveError) as refused:
            client.conversations.send(share, conv, "three")
        assert _code(refused) == "sealing.integrity_failed"


def test_the_sdk_keeps_its_share_in_a_private_file(tmp_path: Path) -> None:
    from medclave.client.conversations import load_or_create_share

    path = tmp_path / "share"
    share = load_or_create_share(path)
    assert len(share) == 32 and load_or_create_share(path) == share
    assert path.stat().st_mode & 0o077 == 0
    path.write_bytes(b"short")
    with pytest.raises(MedclaveError):
        load_or_create_share(path)


def test_the_enclave_logs_nothing_about_a_turn(triage: Enclave, idp: Idp,
                                               caplog: pytest.LogCaptureFixture) -> None:
    share = new_share()
    with caplog.at_level("DEBUG"), sdk(triage, idp.token(roles=["patient"],
                                                         sub="pat-log")) as client:
        conv = client.conversations.create(share, share_with_provider="callback",
                                           callback="+1 555 0123")["id"]
        client.conversations.send(share, conv, CRISIS)
    text = caplog.text
    for word in (SECRET, "urgent", "emergency", "555 0123", encode_share(share)):
        assert word not in text


def test_a_restored_copy_of_the_store_is_caught_by_the_client(triage: Enclave,
                                                              idp: Idp) -> None:
    """The operator keeps a copy of the store and later puts it back: every record still
    verifies (the enclave alone cannot tell), but the app that saw the newer state can."""
    store = OperatorStore(triage)
    share = new_share()
    with sdk(triage, idp.token(roles=["patient"], sub="pat-roll")) as client:
        conv = client.conversations.create(share)["id"]
        client.conversations.send(share, conv, "first")
        snapshot = store.snapshot()
        events = list(client.conversations.send(share, conv, "second", stream=True))
        seen = (events[-1]["turn"] + 1, events[-1]["chain"])
        assert len(client.conversations.export(share, conv, seen=seen)["turns"]) == 4
        store.restore(snapshot)
        assert len(client.conversations.export(share, conv)["turns"]) == 2  # verifies alone
        with pytest.raises(MedclaveError) as refused:
            client.conversations.export(share, conv, seen=seen)
        assert _code(refused) == "sealing.integrity_failed"
