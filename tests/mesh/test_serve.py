"""`medclave kbs serve` with a mesh file: the broker runs the mesh CA and serves mutual TLS, its
CA bootstrap and health open, its workload routes closed to a peer without a certificate."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from tests.mesh.conftest import POLICY, TENANT
from tests.ops.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_the_broker_serves_the_mesh_from_its_config_file(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "segmentation.toml").write_text(POLICY)
    (tmp_path / "mesh.toml").write_text(
        f'identity = "medclave://{TENANT}/broker/kbs-1"\npolicy = "segmentation.toml"\n')
    config = tmp_path / "kbs.toml"
    config.write_text(f'port = {port}\ndata_dir = "{tmp_path / "data"}"\n'
                      f'mesh_file = "{tmp_path / "mesh.toml"}"\nlog_level = "WARNING"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "medclave.cli.main", "kbs", "serve",
                             "--config", str(config)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"https://127.0.0.1:{port}"
    ca = tmp_path / "data" / "mesh-ca.pem"
    try:
        wait_for(lambda: True if ca.exists() else None, timeout=60)
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False  # the broker's name is its identity URI, not a host
        with httpx.Client(verify=context) as client:
            ready = wait_for(lambda: _get(client, url + "/readyz"), timeout=60)
            assert ready.status_code == 200
            assert client.get(url + "/kbs/v1/mesh/ca").json()["ca"] == ca.read_text()
            r = client.post(url + "/kbs/v1/release", json={})
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "mesh.peer_unauthenticated"
            peer = client.get(url + "/readyz").extensions["network_stream"].get_extra_info(
                "ssl_object")
            assert peer is None or peer.version() == "TLSv1.3"
        # plain HTTP is not served
        try:
            plain = httpx.get(f"http://127.0.0.1:{port}/readyz").status_code
        except httpx.TransportError:
            plain = -1
        assert plain != 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""


def _get(client: httpx.Client, url: str) -> httpx.Response | None:
    try:
        return client.get(url)
    except httpx.TransportError:
        return None
