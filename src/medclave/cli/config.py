"""``medclave config show SERVICE``: the configuration a service would start with.

The same sources in the same order as the service's own start (flags > ``MEDCLAVE_*`` >
``--config`` file > defaults, :mod:`medclave.ops.config`), validated the same way; secrets are
printed as stars. Exit 0: valid (printed as JSON); 2: ``config.invalid`` with the field named.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Annotated, Any

import typer

from medclave.cli.options import ConfigFile
from medclave.cli.output import fail
from medclave.errors import MedclaveError

app = typer.Typer(help="Service configuration files.", no_args_is_help=True)

# service -> (module, settings class)
SERVICES: dict[str, tuple[str, str]] = {
    "enclave": ("medclave.enclave.settings", "EnclaveSettings"),
    "kbs": ("medclave.kbs.settings", "KbsSettings"),
    "idp": ("medclave.auth.idp_server", "IdpSettings"),
    "proxy": ("medclave.client.proxy_settings", "ProxySettings"),
}


def settings_model(service: str) -> Any:
    module, name = SERVICES[service]
    return getattr(importlib.import_module(module), name)


@app.command("show")
def show(
    service: Annotated[str, typer.Argument(help="enclave, kbs, idp or proxy")],
    config: ConfigFile = None,
) -> None:
    """Print the effective configuration (secrets masked) or why it is invalid."""
    from medclave.ops.config import effective, load_settings

    if service not in SERVICES:
        raise typer.BadParameter(f"SERVICE is one of {', '.join(SERVICES)}")
    try:
        settings = load_settings(settings_model(service), config_file=config)
    except MedclaveError as exc:
        raise fail(exc) from None
    sys.stdout.write(json.dumps({"service": service, "settings": effective(settings)},
                                indent=2, sort_keys=True) + "\n")
