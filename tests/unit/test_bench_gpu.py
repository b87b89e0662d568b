"""The GPU benchmark (benchmarks/gpu/) skips with a message, never fails, where it cannot run;
it is run by hand on a GPU machine with vLLM (docs/engines.md)."""

from __future__ import annotations

import pytest
from benchmarks.gpu import main as gpu_main
from benchmarks.gpu import vllm as bench


def test_without_a_gpu_it_skips(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    gpu_main()
    assert capsys.readouterr().out.startswith("SKIPPED benchmarks.gpu.vllm: no NVIDIA GPU")


def test_without_vllm_or_a_model_it_skips(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "gpu_cards", lambda: [{"name": "NVIDIA H100 80GB HBM3"}])
    real_find = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name: None if name == "vllm" else real_find(name))
    bench.main()
    assert "vLLM is not installed" in capsys.readouterr().out
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setenv("MEDCLAVE_BENCH_VLLM_MODEL", "/nonexistent/model")
    bench.main()
    assert "does not exist" in capsys.readouterr().out


def test_the_card_list_is_read_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    class Done:
        stdout = "NVIDIA H100 80GB HBM3, 550.90.07, 81559 MiB\n"

    monkeypatch.setattr(bench.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: Done())
    assert bench.gpu_cards() == [{"name": "NVIDIA H100 80GB HBM3",
                                  "driver_version": "550.90.07", "memory_total": "81559 MiB"}]
