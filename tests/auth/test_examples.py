"""Every request in examples/authz goes through `medclave auth decide`; the README's table states
the expected decision and deciding policies, and this test holds the two to each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medclave.auth.consent import consent_from_fhir
from medclave.cli.auth import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "authz"
ROW = re.compile(r"^\|\s*(\d\d-[a-z0-9-]+)\s*\|(?:[^|]*\|){3}\s*(allow|deny)\s*\|\s*([^|]*?)\s*\|\s*$")


def stated() -> dict[str, tuple[str, list[str]]]:
    table: dict[str, tuple[str, list[str]]] = {}
    for line in (EXAMPLES / "README.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in table, f"{m.group(1)} listed twice"
            reasons = [] if m.group(3).startswith("(") else [r.strip() for r in m.group(3).split(",")]
            table[m.group(1)] = (m.group(2), reasons)
    return table


REQUESTS = sorted(p.stem for p in (EXAMPLES / "requests").glob("*.json"))


def test_every_request_is_in_the_readme_and_vice_versa() -> None:
    assert REQUESTS, "no example requests found"
    assert sorted(stated()) == REQUESTS


@pytest.mark.parametrize("name", REQUESTS)
def test_example_request(name: str) -> None:
    expected, reasons = stated()[name]
    result = CliRunner().invoke(
        app,
        [
            "decide",
            "--entities",
            str(EXAMPLES / "entities.json"),
            "--request",
            str(EXAMPLES / "requests" / f"{name}.json"),
            "--json",
        ],
    )
    out = json.loads(result.stdout)
    assert out["decision"] == expected, out
    assert out["reasons"] == reasons, out
    assert out["errors"] == []
    assert result.exit_code == (0 if expected == "allow" else 1)


def test_the_consent_entity_is_the_fhir_conversion() -> None:
    entities = json.loads((EXAMPLES / "entities.json").read_text())
    (shipped,) = [e for e in entities if e["uid"]["type"] == "Consent"]
    fhir = json.loads((EXAMPLES / "fhir" / "consent-carol.json").read_text())
    converted = consent_from_fhir([fhir], tenant="st-mary", patient="carol", consent_id="carol-consent")
    assert shipped == converted.to_cedar()
