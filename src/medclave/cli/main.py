"""Entry point: one Typer app with a sub-app per part. Wiring only: no logic lives here."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="medclave",
    help="Confidential AI for clinical data: attestation, sealed models, audit, authorization.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (command name, module under medclave.cli); each module exposes ``app``.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("attest", "attest"),
    ("model", "model"),
    ("kbs", "kbs"),
    ("enclave", "enclave"),
    ("proxy", "proxy"),
    ("audit", "audit"),
    ("release", "release"),
    ("auth", "auth"),
    ("idp", "idp"),
    ("config", "config"),
    ("monitor", "monitor"),
    ("fl", "fl"),
    ("records", "records"),
)

# (command name, module, function): commands that stand alone rather than as a group.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("scribe", "scribe", "scribe_cmd"),
)

for _name, _module in SUBCOMMANDS:
    app.add_typer(importlib.import_module(f"medclave.cli.{_module}").app, name=_name)
for _name, _module, _function in COMMANDS:
    app.command(_name)(getattr(importlib.import_module(f"medclave.cli.{_module}"), _function))

if __name__ == "__main__":
    app()
