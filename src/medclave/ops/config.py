"""Configuration: one settings model per service, from a TOML file, ``MEDCLAVE_*`` variables and
command-line flags, validated once at start.

Precedence (highest first): flags, environment variables (``MEDCLAVE_ENCLAVE_PORT``,
``MEDCLAVE_KBS_…``, ``MEDCLAVE_IDP_…``, ``MEDCLAVE_PROXY_…``), the TOML file given with
``--config``, the model's defaults. The file holds the model's fields at its top level, by
their names (``port = 8443``, ``auth_tenants = ["st-marys"]``); a key the model does not know
is refused like a bad value, so a misspelt setting never passes silently. pydantic-settings does
the reading (:class:`~pydantic_settings.TomlConfigSettingsSource`); this module only puts the
sources in order and turns any refusal into ``config.invalid`` naming the field.

:func:`effective` is what ``medclave config show SERVICE`` prints: every field's value with
secrets (``SecretStr`` fields: KEK, signing key, client secret) masked.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

from medclave.errors import InputError
from medclave.postgres.pool import is_postgres_url, redacted

S = TypeVar("S", bound=BaseSettings)
MAX_CONFIG_BYTES = 1024 * 1024


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "(settings)"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError("config.invalid", f"cannot read config file {path.name}: "
                         f"{exc.strerror}") from None
    if size > MAX_CONFIG_BYTES:
        raise InputError("config.invalid", f"config file {path.name} over {MAX_CONFIG_BYTES} "
                         "bytes")
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError("config.invalid", f"config file {path.name} is not TOML: {exc}"
                         ) from None


def load_settings(model: type[S], *, config_file: Path | None = None,
                  overrides: Mapping[str, Any] | None = None) -> S:
    """The settings of ``model`` from flags (``overrides``; ``None`` values are left out),
    the environment and ``config_file``; ``config.invalid`` naming the field on any error."""
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    if config_file is not None:
        _check_file(config_file)

    class _FromFile(model):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file is not None:
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=config_file),)
            return sources

    _FromFile.__name__ = _FromFile.__qualname__ = model.__name__
    try:
        loaded = _FromFile(**flags)
    except ValidationError as exc:
        raise InputError("config.invalid", _describe(exc)) from None
    # The model's own class, with exactly these values (no second read of the sources).
    values = {name: getattr(loaded, name) for name in type(loaded).model_fields}
    return model.model_construct(_fields_set=loaded.model_fields_set, **values)


def effective(settings: BaseSettings) -> dict[str, Any]:
    """Every field's value as JSON types, secrets masked (``SecretStr`` dumps as stars; a
    ``postgresql://`` store URL loses its password)."""
    dumped = settings.model_dump(mode="json")
    return {name: redacted(value) if isinstance(value, str) and is_postgres_url(value) else value
            for name, value in dumped.items()}
