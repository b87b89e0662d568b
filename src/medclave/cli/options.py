"""What more than one command shares: the trusted-proxy option, settings errors, role lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

# medclave.serving.ServingSettings.trusted_proxies: forwarded headers are ignored unless listed.
TrustedProxy = Annotated[list[str] | None, typer.Option(
    "--trusted-proxy",
    help="a proxy (IP or CIDR) whose X-Forwarded-For/-Proto this service believes; repeat. "
         "Default: none, the TCP peer is the client")]


# medclave.ops.config: the service's TOML configuration (flags > MEDCLAVE_* > file > defaults).
ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="TOML configuration file (the settings' fields at top level); flags and "
    "MEDCLAVE_* variables override it", exists=False, dir_okay=False)]


def bad_settings(exc: ValueError) -> typer.BadParameter:
    """A settings model's refusal (pydantic's ValidationError is a ValueError) as a usage error
    naming the field, for ``raise bad_settings(exc) from None``."""
    if isinstance(exc, ValidationError) and exc.errors():
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return typer.BadParameter(f"{where}: {err.get('msg', 'invalid')}")
    return typer.BadParameter(str(exc).splitlines()[0])


def split_roles(text: str) -> list[str]:
    """``--roles clinician,nurse`` as a list (blank entries dropped)."""
    return [r.strip() for r in text.split(",") if r.strip()]
