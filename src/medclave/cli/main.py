"""Entry point: one Typer app with a sub-app per part (attest, audit, auth, kbs, model, ...)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="medclave",
    help="Confidential AI for clinical data: attestation, sealed models, audit, authorization.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from medclave.cli import attest

    app.add_typer(attest.app, name="attest")


_register()

if __name__ == "__main__":
    app()
