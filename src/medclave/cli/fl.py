"""``medclave fl``: a confidential federation on Flower, for its operator and its sites.

Operator: ``create`` (federation folder, TLS, policy), ``serve`` (the SuperLink), ``challenge``
(an admission nonce), ``admit`` (appraise a site's evidence, register its node key), ``run``
(``flwr run`` with the federation's settings), ``status``. Site: ``site init`` (node key, policy,
sealed data), ``site attest`` (admission evidence for a nonce), ``site serve`` (its SuperNode).
``demo`` runs the whole story on this machine (sim platform).

Exit 0: done; 1: refused (evidence, policy, run failure); 2: unusable input.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from medclave.attestation import sim
from medclave.attestation.verifier import parse_bundle
from medclave.cli import output
from medclave.cli.output import emit
from medclave.fl import deploy
from medclave.fl.federation import Federation, admission_runtime, read_json
from medclave.kbs.sealed_models import write_owner_keypair

app = typer.Typer(help="Confidential federated learning on Flower: attested sites, sealed "
                  "updates.", no_args_is_help=True)
site_app = typer.Typer(help="A site (hospital): its SuperNode, node key and sealed data.",
                       no_args_is_help=True)
app.add_typer(site_app, name="site")


def _terminate_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so ``finally`` blocks stop the Flower processes."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


@app.command("create")
def create(
    folder: Annotated[Path, typer.Argument(help="the federation folder to create")],
    federation_id: Annotated[str, typer.Option("--id", help="the federation's name")],
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="appraisal policy (TOML); default: sim with this code's measurement")
    ] = None,
) -> None:
    """A federation folder: policy, TLS (CA and SuperLink certificate), owner key, Flower App."""
    def go() -> dict[str, Any]:
        authority = sim.SimAuthority.load_or_create(folder / "sim")
        from medclave.fl.local import demo_policy  # Flower loads only where it is used

        text = policy.read_text() if policy else demo_policy(sim.code_measurement())
        fed = Federation.create(folder, federation_id=federation_id, policy_text=text,
                                sim_roots=[authority.root_fingerprint], superlink="")
        deploy.make_tls(folder / "tls")
        write_owner_keypair(folder / "owner.key")
        deploy.write_app(folder / "app")
        return {"federation": fed.id, "folder": str(folder),
                "policy_digest": fed.policy().digest()}
    emit(output.run(go))


@app.command("serve")
def serve(
    folder: Annotated[Path, typer.Argument(help="the federation folder")],
    port: Annotated[int, typer.Option("--port")] = 9092,
) -> None:
    """Run the SuperLink (TLS, SuperNode authentication on) until interrupted."""
    _terminate_on_sigterm()
    deploy.write_cli_config(folder / "cli-home", f"127.0.0.1:{port}", folder / "tls" / "ca.pem")
    proc = deploy.start_superlink(folder, port)
    emit({"superlink": f"127.0.0.1:{port}", "log": str(proc.log)})
    try:
        while proc.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()


@app.command("challenge")
def challenge(
    folder: Annotated[Path, typer.Argument(help="the federation folder")],
    site: Annotated[str, typer.Option("--site")],
) -> None:
    """A one-time admission nonce for SITE (hex)."""
    emit({"site": site, "nonce": output.run(lambda: Federation(folder).challenge(site)).hex()})


@app.command("admit")
def admit(
    folder: Annotated[Path, typer.Argument(help="the federation folder")],
    site: Annotated[str, typer.Option("--site")],
    evidence: Annotated[Path, typer.Option("--evidence", help="the site's evidence bundle")],
    public_key: Annotated[Path, typer.Option("--public-key", help="the site's node.pub")],
) -> None:
    """Appraise SITE's evidence; on success register its node key with the SuperLink."""
    def go() -> dict[str, Any]:
        fed = Federation(folder)
        bundle = parse_bundle(evidence.read_bytes())
        start = time.perf_counter()
        member = fed.admit(site, bundle, public_key.read_bytes(), register=lambda key, name:
                           deploy.register_node(folder / "cli-home", public_key, name=name))
        return {"admitted": member.__dict__, "seconds": round(time.perf_counter() - start, 3)}
    emit(output.run(go))


@app.command("run")
def run(
    folder: Annotated[Path, typer.Argument(help="the federation folder")],
    name: Annotated[str, typer.Option("--name", help="run folder name")] = "run",
    rounds: Annotated[int, typer.Option("--rounds")] = 3,
    dp: Annotated[bool, typer.Option("--dp/--no-dp")] = False,
    timeout: Annotated[float, typer.Option("--timeout")] = 900.0,
) -> None:
    """``flwr run`` the federation's app (gate and SecAgg+ on) and wait for its result."""
    def go() -> dict[str, Any]:
        run_dir = folder / "runs" / name
        settings = {**deploy.APP_CONFIG, "federation-dir": str(folder.resolve()),
                    "run-dir": str(run_dir.resolve()), "rounds": rounds, "dp": dp}
        run_id = deploy.run_app(folder / "cli-home", folder / "app", settings, timeout=120)
        status = deploy.wait_run(folder / "cli-home", run_id, timeout=timeout,
                                 done=run_dir / "result.json")
        return {"run": run_id, "status": status, "result": read_json(run_dir / "result.json", {})}
    emit(output.run(go))


@app.command("status")
def status(folder: Annotated[Path, typer.Argument(help="the federation folder")]) -> None:
    """Members, and each run's rounds, ε and excluded sites."""
    def go() -> dict[str, Any]:
        fed = Federation(folder)
        runs = {}
        for result in sorted((folder / "runs").glob("*/result.json")):
            r = read_json(result, {})
            runs[result.parent.name] = {k: r.get(k) for k in
                                        ("rounds", "evaluation", "excluded", "model_sha256")}
        return {"federation": fed.id, "members": {k: v.__dict__ for k, v in fed.members().items()},
                "runs": runs}
    emit(output.run(go))


@site_app.command("init")
def site_init(
    folder: Annotated[Path, typer.Argument(help="the site folder to create")],
    site: Annotated[str, typer.Option("--site")],
    federation: Annotated[str, typer.Option("--federation", help="the federation's id")],
    policy: Annotated[Path, typer.Option("--policy", help="the site's policy for the aggregator")],
    sim_dir: Annotated[Path, typer.Option("--sim-dir", help="sim authority folder (sim only)")],
) -> None:
    """A site folder: a fresh P-384 node key and the site's policy."""
    from medclave.fl.site import init_site  # Flower loads only where it is used

    s = output.run(lambda: init_site(folder, site=site, federation=federation, sim_dir=sim_dir,
                               policy_text=policy.read_text()))
    emit({"site": s.name, "node_key": s.node_key()})


@site_app.command("attest")
def site_attest(
    folder: Annotated[Path, typer.Argument(help="the site folder")],
    nonce: Annotated[str, typer.Option("--nonce", help="the federation's nonce (hex)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the evidence bundle")],
) -> None:
    """Admission evidence: binds the node key, the sealed data's digest and NONCE."""
    def go() -> dict[str, Any]:
        from medclave.fl.site import Site

        site = Site(folder)
        data = str(read_json(folder / "data" / "manifest.json", {}).get("plaintext_sha256", ""))
        bundle = site.attester()(bytes.fromhex(nonce), admission_runtime(
            str(site.meta["federation"]), site.name, site.node_key(), data))
        out.write_text(bundle.model_dump_json())
        return {"evidence": str(out)}
    emit(output.run(go))


@site_app.command("serve")
def site_serve(
    folder: Annotated[Path, typer.Argument(help="the site folder")],
    superlink: Annotated[str, typer.Option("--superlink", help="host:port")],
    ca: Annotated[Path, typer.Option("--ca", help="the federation CA (ca.pem)")],
    port: Annotated[int, typer.Option("--port", help="the SuperNode's local API port")] = 9094,
) -> None:
    """Run the site's SuperNode until interrupted."""
    _terminate_on_sigterm()
    proc = deploy.start_supernode(folder, superlink=superlink, ca=ca, port=port)
    emit({"supernode": folder.name, "log": str(proc.log)})
    try:
        while proc.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="a new folder for the demo")],
    rounds: Annotated[int, typer.Option("--rounds")] = 3,
) -> None:
    """Five hospitals on this machine (sim): admission, gated SecAgg+ rounds with and without
    DP, a site tampering in round 3, baselines, clean room, audit; prints the report."""
    from medclave.fl.report import run_demo

    _terminate_on_sigterm()
    from medclave.fl.local import LocalFederation

    emit(output.run(lambda: run_demo(LocalFederation.create(out), rounds=rounds)))
