"""Resource names: ``kbs:///OWNER/TYPE/NAME`` (the issue's naming, after the KBS of CoCo trustee).

Each segment is short and drawn from a small alphabet so a name can travel in a URL path, an AAD
and a log line without escaping; owners are lower case with no dot, because owner tokens are
``mkt1.OWNER.SECRET``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medclave.errors import InputError

SCHEME = "kbs:///"
MAX_NAME_CHARS = 400
OWNER_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Resource types the platform uses; others are accepted (a tenant may add its own).
MODEL_KEY = "model-key"
DATA_KEY = "data-key"
SEALING_ROOT = "sealing-root"


@dataclass(frozen=True, order=True)
class ResourceName:
    owner: str
    type: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ResourceName:
        """``kbs:///OWNER/TYPE/NAME``; anything else is ``input.malformed``."""
        if not isinstance(text, str) or len(text) > MAX_NAME_CHARS or not text.startswith(SCHEME):
            raise InputError("input.malformed", "a resource name is kbs:///OWNER/TYPE/NAME")
        parts = text[len(SCHEME) :].split("/")
        if len(parts) != 3:
            raise InputError("input.malformed", "a resource name is kbs:///OWNER/TYPE/NAME")
        return cls.of(*parts)

    @classmethod
    def of(cls, owner: str, type_: str, name: str) -> ResourceName:
        if not OWNER_RE.fullmatch(owner):
            raise InputError(
                "input.malformed", "owner: lower-case letters, digits and '-' (max 63)"
            )
        if not SEGMENT_RE.fullmatch(type_) or not SEGMENT_RE.fullmatch(name):
            raise InputError("input.malformed", "type and name: letters, digits, '.', '_', '-'")
        return cls(owner, type_, name)

    def __str__(self) -> str:
        return f"{SCHEME}{self.owner}/{self.type}/{self.name}"

    @property
    def path(self) -> str:
        """``OWNER/TYPE/NAME``: how the owner API addresses it."""
        return f"{self.owner}/{self.type}/{self.name}"


def valid_owner(owner: str) -> str:
    if not OWNER_RE.fullmatch(owner):
        raise InputError("input.malformed", "owner: lower-case letters, digits and '-' (max 63)")
    return owner
