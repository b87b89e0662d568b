"""A real enclave process for the drain test: sim platform, an engine that takes
``MEDCLAVE_TEST_ENGINE_SECONDS`` per answer (and marks when it starts one), audit in SQLite,
served by :func:`medclave.ops.lifecycle.serve` as ``medclave enclave serve`` serves it.

Prints one JSON line when booted (the sim root to pin), and ``{"closed": true}`` after the
service closed (audit log included), so the test sees the ``finally`` ran.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medclave.enclave.app import create_app
from medclave.enclave.boot import boot
from medclave.enclave.engines.base import ChatMessage, Completion, SamplingParams
from medclave.enclave.settings import EnclaveSettings
from medclave.ops import lifecycle
from medclave.ops.logs import configure_logging
from tests.e2e.helpers import FakeEngine, write_commitment_key


class SlowEngine(FakeEngine):
    def __init__(self, marker: Path, seconds: float) -> None:
        super().__init__()
        self.marker, self.seconds = marker, seconds

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        self.marker.touch()
        time.sleep(self.seconds)
        return super().chat(messages, params)


def main() -> None:
    data = Path(sys.argv[1])
    port, metrics_port = int(sys.argv[2]), int(sys.argv[3])
    settings = EnclaveSettings(
        data_dir=data, platform="sim", port=port, metrics_port=metrics_port,
        insecure_no_auth=True, commitment_key_file=write_commitment_key(data / "tenant.key"),
        drain_seconds=float(os.environ.get("MEDCLAVE_TEST_DRAIN", "1.0")))
    configure_logging("enclave", level="INFO")
    engine = SlowEngine(data / "engine-busy",
                        float(os.environ.get("MEDCLAVE_TEST_ENGINE_SECONDS", "2.0")))
    booted = boot(settings, engine_factory=lambda path, s: engine)
    print(json.dumps({"sim_root": booted.platform.sim_root}), flush=True)
    try:
        lifecycle.serve(create_app(booted.service, settings), settings, settings,
                        host="127.0.0.1", port=port)
    finally:
        booted.close()
        print(json.dumps({"closed": True}), flush=True)


if __name__ == "__main__":
    main()
