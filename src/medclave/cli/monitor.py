"""``medclave monitor``: access monitoring for the privacy officer (:mod:`medclave.monitor`).

``learn`` builds per-user baselines from past access events; ``run`` scores new events against
them and sends explained, deduplicated alerts to a file and/or a webhook (``--follow``: as they
are appended, until SIGTERM, resuming from a cursor: :mod:`medclave.monitor.follow`); ``simulate`` writes a
hospital's events from Synthea bundles (with labelled misuse) to try it on; ``evaluate`` reports
AUROC, recall at a 1% alert rate and event-to-alert time on that simulation.
Exit 0: done; 2: unusable input; 1: an alert could not be delivered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medclave.cli.output import fail
from medclave.errors import InputError, MedclaveError

if TYPE_CHECKING:
    from medclave.monitor.alerts import Monitor

app = typer.Typer(help="Access monitoring: baselines, scoring, alerts.", no_args_is_help=True)


@app.command("learn")
def learn(
    events: Annotated[Path, typer.Option("--events", help="past access events (JSON lines)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the baselines (JSON)")],
) -> None:
    """Learn each user's normal access from past events."""
    from medclave.auth.access import read_events
    from medclave.monitor.model import Baselines

    try:
        baselines = Baselines.learn(read_events(events))
    except MedclaveError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise fail(InputError("input.missing", f"cannot read {events.name}: {exc.strerror}")
                   ) from None
    out.write_text(json.dumps(baselines.to_dict()))
    sys.stdout.write(json.dumps({"users": len(baselines.users)}) + "\n")


@app.command("run")
def run(
    baselines: Annotated[Path, typer.Option("--baselines", help="from `monitor learn`")],
    directory: Annotated[Path, typer.Option("--directory", help="users and patients (JSON)")],
    events: Annotated[Path, typer.Option("--events", help="new access events (JSON lines)")],
    alerts_file: Annotated[Path | None, typer.Option(
        "--alerts-file", help="append alerts here (JSON lines, created 0600)")] = None,
    webhook: Annotated[str | None, typer.Option(
        "--webhook", help="POST each alert here (https, or http to loopback)")] = None,
    threshold: Annotated[float, typer.Option(help="alert at or above this score")] = 4.0,
    follow: Annotated[bool, typer.Option(
        "--follow", help="keep running: score events as they are appended (SIGTERM stops)")
    ] = False,
    cursor: Annotated[Path | None, typer.Option(
        "--cursor", help="with --follow: where the follower keeps its place (required)")] = None,
    poll_seconds: Annotated[float, typer.Option(
        "--poll-seconds", min=0.01, max=60.0, help="with --follow: how often to look")] = 0.2,
) -> None:
    """Score new events; raise explained, deduplicated alerts. With --follow, tail the
    events file until SIGTERM, resuming from --cursor after a restart."""
    from medclave.auth.access import read_events
    from medclave.monitor.alerts import AlertSink, FileSink, Monitor, WebhookSink
    from medclave.monitor.model import Baselines, Directory, Scorer

    if alerts_file is None and webhook is None:
        raise typer.BadParameter("give --alerts-file and/or --webhook")
    if follow and cursor is None:
        raise typer.BadParameter("--follow needs --cursor")
    sinks: list[AlertSink] = []
    closers = []
    try:
        learned = Baselines.from_dict(json.loads(baselines.read_text(encoding="utf-8")))
        people = Directory.load(directory)
        if alerts_file is not None:
            file_sink = FileSink(alerts_file)
            sinks.append(file_sink)
            closers.append(file_sink.close)
        if webhook is not None:
            hook = WebhookSink(webhook)
            sinks.append(hook)
            closers.append(hook.close)
        monitor = Monitor(Scorer(learned, people), *sinks, threshold=threshold,
                          keep=not follow)
        if follow:
            assert cursor is not None
            summary = _follow(events, cursor, monitor, poll_seconds)
        else:
            seen = 0
            for event in sorted(read_events(events), key=lambda e: e.at):
                monitor.observe(event)
                seen += 1
            summary = {"events": seen, "alerts": len(monitor.raised),
                       "suppressed": monitor.dedup.suppressed}
    except MedclaveError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise fail(InputError("input.missing", f"cannot read a file: {exc.strerror}")) from None
    except ValueError as exc:
        raise fail(InputError("input.malformed", str(exc)[:200])) from None
    finally:
        for close in closers:
            close()
    sys.stdout.write(json.dumps(summary) + "\n")


def _follow(events: Path, cursor: Path, monitor: Monitor, poll_seconds: float) -> dict[str, int]:
    """The follower until SIGTERM or SIGINT (then it saves its cursor and returns)."""
    import signal
    import threading

    from medclave.monitor.follow import Follower
    from medclave.ops.logs import configure_logging

    configure_logging("monitor", level="INFO")  # JSON lines on stderr, counts only
    follower = Follower(events, cursor, monitor, poll_seconds=poll_seconds)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return follower.run(stop).to_dict()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command("simulate")
def simulate_cmd(
    fhir: Annotated[Path, typer.Option("--fhir", help="a folder of Synthea FHIR bundles")],
    out: Annotated[Path, typer.Option("--out", help="folder for the simulated files")],
    seed: Annotated[int, typer.Option(help="random seed")] = 16,
) -> None:
    """Write directory.json, train.jsonl, test.jsonl and labels.json from Synthea bundles."""
    from medclave.monitor.simulate import simulate

    data = simulate(fhir, seed=seed)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    (out / "directory.json").write_text(json.dumps(data.hospital.directory.to_dict()))
    with (out / "train.jsonl").open("w") as fh:
        for event in data.train:
            fh.write(json.dumps(event.to_dict()) + "\n")
    labels: dict[int, str] = {}
    with (out / "test.jsonl").open("w") as fh:
        for i, (event, tag) in enumerate(data.test):
            fh.write(json.dumps(event.to_dict()) + "\n")
            if tag is not None:
                labels[i] = tag
    (out / "labels.json").write_text(json.dumps(labels))
    sys.stdout.write(json.dumps({"train": len(data.train), "test": len(data.test),
                                 "misuse": len(labels)}) + "\n")


@app.command("evaluate")
def evaluate_cmd(
    fhir: Annotated[Path, typer.Option("--fhir", help="a folder of Synthea FHIR bundles")],
    seed: Annotated[int, typer.Option(help="random seed")] = 16,
) -> None:
    """AUROC, recall at a 1% alert rate, event-to-alert time, example alerts."""
    from medclave.monitor.evaluate import evaluate
    from medclave.monitor.simulate import simulate

    sys.stdout.write(json.dumps(evaluate(simulate(fhir, seed=seed)).to_dict(), indent=2)
                     + "\n")
