"""The transcription API's multipart parser: what the openai package sends parses; anything
else is refused with a code, bounded in parts and field sizes (fuzzed)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.enclave.audio_api import MAX_FIELD_BYTES, MAX_PARTS, parse_form
from medclave.errors import InputError


def _encode(files: dict[str, tuple[str, bytes]], data: dict[str, str]) -> tuple[bytes, str]:
    # httpx builds multipart bodies the way the openai package (an httpx client) sends them.
    request = httpx.Request("POST", "http://127.0.0.1/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_what_the_openai_client_sends_parses() -> None:
    audio = bytes(range(256)) * 40
    body, content_type = _encode({"file": ("visit.wav", audio)},
                                 {"model": "whisper-1", "response_format": "verbose_json"})
    parts = parse_form(body, content_type)
    assert bytes(parts["file"].data) == audio and parts["file"].filename == "visit.wav"
    assert bytes(parts["model"].data) == b"whisper-1" and parts["model"].filename is None
    assert bytes(parts["response_format"].data) == b"verbose_json"


@pytest.mark.parametrize("content_type", [None, "", "application/json",
                                          "multipart/form-data", "multipart/mixed; boundary=x",
                                          "multipart/form-data; boundary=" + "x" * 201])
def test_not_a_form_is_refused(content_type: str | None) -> None:
    with pytest.raises(InputError) as caught:
        parse_form(b"--x\r\n\r\n--x--\r\n", content_type)
    assert caught.value.code == "input.malformed"


def test_bounds() -> None:
    audio = {"file": ("a.wav", b"RIFF")}
    body, content_type = _encode(audio, {f"f{i}": "v" for i in range(MAX_PARTS)})
    with pytest.raises(InputError, match="form parts"):
        parse_form(body, content_type)
    body, content_type = _encode(audio, {"prompt": "p" * (MAX_FIELD_BYTES + 1)})
    with pytest.raises(InputError, match="too long"):
        parse_form(body, content_type)
    repeated = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n"
                b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--b--\r\n")
    with pytest.raises(InputError, match="repeated"):
        parse_form(repeated, "multipart/form-data; boundary=b")
    unnamed = b"--b\r\nContent-Disposition: form-data\r\n\r\na\r\n--b--\r\n"
    with pytest.raises(InputError, match="without a name"):
        parse_form(unnamed, "multipart/form-data; boundary=b")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=4096), boundary=st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=70))
def test_fuzzed_forms_parse_or_are_refused(body: bytes, boundary: str) -> None:
    try:
        parts = parse_form(body, f"multipart/form-data; boundary={boundary}")
    except InputError as exc:
        assert exc.code == "input.malformed"
    else:
        assert len(parts) <= MAX_PARTS


@settings(max_examples=200, deadline=None)
@given(mutation=st.integers(min_value=0, max_value=10_000), value=st.integers(0, 255))
def test_fuzzed_real_forms_parse_or_are_refused(mutation: int, value: int) -> None:
    body, content_type = _encode({"file": ("a.wav", b"RIFF" + bytes(300))}, {"model": "m"})
    data = bytearray(body)
    data[mutation % len(data)] = value
    try:
        parse_form(bytes(data), content_type)
    except InputError as exc:
        assert exc.code == "input.malformed"


def test_the_parser_logs_nothing_of_the_body(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"), pytest.raises(InputError):
        parse_form(b"\xd7\xa2 secret patient words", "multipart/form-data; boundary=b")
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")]
