"""Issue 14: the audio and the transcript never touch a disk.

Before and after a scribe request (audio in, note out) the test lists every file under the
enclave's data folder (the SQLite audit log lives there), a private temporary folder the
process was pointed at, the machine's ``/tmp`` and ``/dev/shm``. In the private folders no file
may appear except the audit log's own; in every file that appeared or changed anywhere
(``/tmp`` and ``/dev/shm`` are shared with whatever else runs on the machine) neither the
transcript's words nor a slice of the audio's bytes may be found.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medclave.enclave.speech import Transcriber
from medclave.protocol import inference as proto
from tests.scribe.conftest import start_stack

SHARED = (Path("/tmp"), Path("/dev/shm"))  # watched, not written
MAX_SCAN = 64 * 1024 * 1024


def _files(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root, onerror=lambda e: None):
        for name in names:
            yield Path(folder) / name


def snapshot(roots: list[Path]) -> dict[Path, tuple[float, int]]:
    out: dict[Path, tuple[float, int]] = {}
    for root in roots:
        for path in _files(root):
            try:
                info = path.lstat()
            except OSError:
                continue
            out[path] = (info.st_mtime, info.st_size)
    return out


def changed(before: dict[Path, tuple[float, int]], after: dict[Path, tuple[float, int]]
            ) -> list[Path]:
    return sorted(p for p, v in after.items() if before.get(p) != v)


def test_a_scribe_request_leaves_no_audio_or_text_on_disk(
        tmp_path: Path, transcriber: Transcriber, spoken: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    stack = start_stack(tmp_path / "stack", transcriber)
    try:
        data_dir = stack.settings.data_dir
        watched = [data_dir, private_tmp, *SHARED]
        audio = spoken["uti"]
        before = snapshot(watched)
        response = httpx.post(f"{stack.proxy_url}{proto.SCRIBE_PATH}", timeout=300,
                              files={"file": ("visit.wav", audio)}, data={"patient": "p-1"})
        assert response.status_code == 200, response.text
        after = snapshot(watched)
    finally:
        stack.stop()
    body = response.json()
    words = {w.lower() for w in re.findall(r"[A-Za-z]{6,}", body["transcript"]["text"])}
    words |= {w.lower() for w in re.findall(r"[A-Za-z]{6,}", body["note"]["text"])}
    words -= {"clinician", "patient", "subjective", "objective", "assessment", "recorded"}
    assert len(words) >= 5, words
    middle = len(audio) // 2
    needles = [w.encode() for w in words] + [audio[middle:middle + 64]]
    new = changed(before, after)
    # In the folders only this process uses: nothing new but the audit log's own files.
    private = [p for p in new if p.is_relative_to(private_tmp) or p.is_relative_to(data_dir)]
    assert all(p.is_relative_to(data_dir / "audit") for p in private), private
    # Anywhere at all: no file that appeared or changed holds a word of the visit or its audio.
    for path in new:
        try:
            data = path.read_bytes()[:MAX_SCAN].lower()
        except OSError:
            continue  # another process's file, gone or not ours to read
        found = [n for n in needles if n.lower() in data]
        assert not found, f"{path} holds {found[:3]}"
    # The audit log did change (an entry was appended), and it holds commitments only.
    assert any(p.is_relative_to(data_dir / "audit") for p in new)
