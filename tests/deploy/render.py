"""Render the Helm chart with Helm's own template engine, offline: ``python -m tests.deploy.render``.

Helm is not a Debian or PyPI binary here, so the chart is rendered by the PyPI wheel
``helm-python-sdk`` (import ``helm_python``): Helm's official Go SDK (v4) built as a C library
and called through ctypes, so ``tpl``, ``toYaml``, ``fail``, ``required`` and the rest behave as
``helm template`` does. It runs in a child process (this module): the Go runtime it loads stays
out of the test process.

stdin: ``{"chart": PATH, "release": NAME, "namespace": NS, "variants": {NAME: VALUES}}``;
stdout: ``{"lint": {...}, "variants": {NAME: {"ok": true, "files": {PATH: YAML}} |
{"ok": false, "error": TEXT}}}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import helm_python


def main() -> None:
    request = json.load(sys.stdin)
    out: dict[str, Any] = {"variants": {}}
    out["lint"] = helm_python.lint(request["chart"], request.get("lint_values"), strict=True)
    with helm_python.Chart.load(request["chart"]) as chart:
        for name, values in request["variants"].items():
            try:
                files = chart.render(values, name=request["release"],
                                     namespace=request["namespace"], is_install=True)
                out["variants"][name] = {"ok": True, "files": files}
            except helm_python.HelmError as exc:
                out["variants"][name] = {"ok": False, "error": str(exc)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
