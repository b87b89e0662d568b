"""The shared helpers of ``medclave.util``: the LRU bound and the secret-file rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medclave.errors import InputError
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
