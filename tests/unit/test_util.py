"""The shared helpers of ``medclave.util``: the LRU bound and the secret-file rules."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medclave.errors import InputError
from medclave.util.b64 import Padding, b64decode, b64encode
from medclave.util.files import (
    check_secret_file,
    create_file,
    create_secret_file,
    read_secret_file,
    write_atomic,
    write_secret_file,
)
from medclave.util.lru import Lru


def test_lru_drops_the_least_recently_used_and_stores_no_none() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), len(lru)) == (1, None, 3, 2)
    with pytest.raises(ValueError):
        lru.put("d", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Lru(0)


def test_write_atomic_replaces_whole_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"old")
    write_atomic(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"

    def broken(fh: object) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(target, broken)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_new_files_are_never_overwritten(tmp_path: Path) -> None:
    create_file(tmp_path / "pub", b"1")
    create_secret_file(tmp_path / "key", b"2")
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    for name in ("pub", "key"):
        with pytest.raises(FileExistsError):
            create_secret_file(tmp_path / name, b"3")
    assert (tmp_path / "key").read_bytes() == b"2"


def test_secret_files_are_read_only_when_owner_only(tmp_path: Path) -> None:
    key = tmp_path / "key"
    write_secret_file(key, b"seed")
    assert key.stat().st_mode & 0o777 == 0o600
    assert read_secret_file(key, "test key", max_bytes=2) == b"se"
    check_secret_file(key, "test key")
    key.chmod(0o640)
    for check in (lambda: read_secret_file(key, "test key", max_bytes=9),
                  lambda: check_secret_file(key, "test key")):
        with pytest.raises(InputError) as e:
            check()
        assert e.value.code == "config.invalid" and "chmod 600" in e.value.detail
    key.chmod(0o600)
    link = tmp_path / "link"
    os.symlink(key, link)
    with pytest.raises(InputError) as e:
        read_secret_file(link, "test key", max_bytes=9)  # O_NOFOLLOW: a link is not the key
    assert e.value.code == "config.invalid"
    with pytest.raises(InputError) as e:
        read_secret_file(tmp_path, "test key", max_bytes=9)
    assert e.value.code == "config.invalid"
    with pytest.raises(InputError) as e:
        check_secret_file(tmp_path / "absent", "test key")
    assert e.value.code == "config.invalid"


# --- base64: one text per value -------------------------------------------------------------


@pytest.mark.parametrize(("text", "url", "padding", "data"), [
    ("aGk=", False, "required", b"hi"),        # RFC 4648 §10 style: "hi"
    ("Zm9vYg==", False, "required", b"foob"),  # RFC 4648 §10 test vector
    ("Zm9vYg", True, "forbidden", b"foob"),
    ("Zm9vYg", False, "optional", b"foob"),
    ("Zm9vYg==", True, "optional", b"foob"),
    ("+/8=", False, "required", b"\xfb\xff"),
    ("-_8", True, "forbidden", b"\xfb\xff"),
    ("", True, "forbidden", b""),
])
def test_b64_known_answers(text: str, url: bool, padding: Padding, data: bytes) -> None:
    assert b64decode(text, url=url, padding=padding) == data
    assert b64encode(data, url=url, pad=padding != "forbidden") == (
        text if padding != "optional" or "=" in text else text + "=" * (-len(text) % 4))


@pytest.mark.parametrize(("text", "url", "padding"), [
    ("aGk", False, "required"),      # padding missing
    ("aGk=", True, "forbidden"),     # padding present
    ("aGl=", False, "required"),     # pad bits set: another text for b"hi"
    ("aGk==", False, "optional"),    # too much padding
    ("a", False, "optional"),        # 1 mod 4: no whole byte
    ("a+b/", True, "optional"),      # standard characters in base64url
    ("a_b-", False, "optional"),     # url characters in standard base64
    ("aG k=", False, "required"),    # whitespace is not skipped
    ("aGk=\n", False, "required"),
])
def test_b64_refuses_every_other_text(text: str, url: bool, padding: Padding) -> None:
    with pytest.raises(ValueError):
        b64decode(text, url=url, padding=padding)


@given(st.binary(max_size=64), st.booleans())
def test_b64_round_trips_and_is_one_to_one(data: bytes, url: bool) -> None:
    text = b64encode(data, url=url, pad=False)
    assert b64decode(text, url=url, padding="forbidden") == data
    assert b64decode(b64encode(data, url=url), url=url) == data
    if text and text[-1] not in "AQgw":  # the last character carries pad bits: flip one
        bad = text[:-1] + chr(ord(text[-1]) ^ 1)
        with contextlib.suppress(ValueError):
            assert b64decode(bad, url=url, padding="forbidden") != data
