"""The layering of ``src/medclave``, enforced: every import checked against docs/architecture.md.

The rules (docs/architecture.md, "Layers and import rules"):

1. Imports go down. A module may import modules of its own part, or of parts on a lower layer
   (table ``LAYERS``; within layer 1, ``protocol`` sits on ``crypto``: ``WITHIN_LAYER``); never a
   part on its own layer or above, unless ``ALLOWED_IMPORTS`` names the pair with its reason.
2. The two ends meet only in ``protocol`` and ``crypto``: nothing the client imports, directly or
   through other modules (package ``__init__`` files included), is in ``enclave`` or ``apps``,
   and nothing the enclave imports is in ``client``. No allow-list applies.
3. The pure libraries (``attestation``, ``audit``, ``crypto``, ``protocol``) import no web
   framework, no database driver and no HTTP client, except the modules ``ALLOWED_THIRD_PARTY``
   names with their reasons.
4. The library never imports the test suite or the benchmarks.

What counts as an import: ``import a.b``, ``from a import b`` (``b`` is a module when one of that
name exists, else a name in ``a``), relative imports, imports inside functions, imports under
``if TYPE_CHECKING:`` (a dependency for types is still a dependency: a reader of the module must
know the imported one, and mypy needs it), and ``importlib.import_module`` of a module named by a
string literal in the same module (the attestation registry, the CLI's sub-commands).

The checker works on source text, so ``test_checker_*`` prove on synthetic modules that every
rule can fail, and every allow-list entry must still be needed (a stale one fails).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "medclave"

# Part -> layer. A part is a sub-package or top-level module of ``medclave``; ``medclave`` itself
# is the package root (``__version__``). ``serving`` is the HTTP-service helper: usable by the
# services on layer 4 and above, so it sits between layers 3 and 4.
LAYERS: dict[str, float] = {
    ROOT: 0,
    "errors": 0,
    "util": 0.5,  # shared helpers: on errors, under everything else
    "crypto": 1,
    "protocol": 1,
    "attestation": 2,
    "audit": 3,
    "auth": 3,
    "mesh": 3.4,  # workload identities, segmentation policy, mutual TLS: under serving
    "serving": 3.5,
    "ops": 3.6,
    "migrations": 0.5,
    "postgres": 0.5,  # PostgreSQL pool and migrations: on errors, under every store
    # Records retrieval (FHIR ingest, sealed store, index, Cedar filtering) sits on auth and is
    # what the enclave serves: between the libraries and the services.
    "records": 3.6,
    "enclave": 4,
    "kbs": 4,
    "client": 4,
    "fl": 4,
    "monitor": 4,
    "apps": 5,
    "cli": 6,
    "demo": 6,
    "background": 5.5,  # background servers for the demo, tests and benchmarks: no library
    # module imports it (it sits above every part of the library, under the demo)
}

# Two parts share layer 1, in order: protocol is built on crypto (the wire formats use its
# Binary HTTP, OHTTP media types, canonical JSON and base64url), never the reverse.
WITHIN_LAYER: dict[tuple[str, str], str] = {
    ("protocol", "crypto"): "the wire formats are built on crypto's encodings",
}

# (importing part or module, imported module) -> why the import is allowed although it does not
# go down. An importer key matches the module of that name and every module under it.
ALLOWED_IMPORTS: dict[tuple[str, str], str] = {
    # The enclave side of key release lives in kbs, beside the broker it speaks to: the enclave
    # (layer 4) uses the broker's client, resource names, answer signatures and sealed-model
    # loading (kbs, layer 4). Nothing else of kbs, and kbs never imports the enclave.
    ("medclave.enclave", "medclave.kbs.client"):
        "KbsClient: challenge, evidence over an ephemeral key, signed release, HPKE open",
    ("medclave.enclave", "medclave.kbs.names"):
        "ResourceName: kbs:///TENANT/commitment-key/audit for tenants' commitment keys",
    ("medclave.enclave", "medclave.kbs.signing"):
        "TrustedBrokers: the broker keys whose signed release answers the enclave accepts",
    ("medclave.enclave", "medclave.kbs.sealed_models"):
        "load_sealed_model: the model key fetched from the broker, weights opened into a memfd",
    # Federated learning (layer 4) seals the final model in the sealed-model format and reads
    # the federation owner's key with kbs's helpers; nothing else of kbs.
    ("medclave.fl", "medclave.kbs.sealed_models"):
        "seal_model/read_key_file/write_owner_keypair: the final model, sealed for the members",
    ("medclave.fl", "medclave.kbs.client"):
        "KbsClient: the site data key released by the site's broker to its attested SuperNode",
    ("medclave.fl", "medclave.kbs.signing"):
        "TrustedBrokers: the broker keys whose signed release answers a site accepts",
    # The development IdP's HTTP face sits in auth beside the issuer logic it serves
    # (auth/__init__.py says so); it is the one service below layer 4. auth's library core
    # (tokens, authn, authorizer, ...) never imports it.
    ("medclave.auth.idp_server", "medclave.serving"):
        "the dev IdP server (medclave idp serve) uses the shared service helpers",
    ("medclave.auth.idp_server", "medclave.ops.lifecycle"):
        "the dev IdP is served like every service: SIGTERM drains",
    ("medclave.auth.idp_server", "medclave.ops.health"): "its /readyz checks",
    ("medclave.auth.idp_server", "medclave.ops.http"): "its /healthz, /readyz and metrics",
    ("medclave.auth.idp_server", "medclave.ops.logs"): "its JSON logs",
    ("medclave.auth.idp_server", "medclave.ops.settings"): "its operations settings",
    ("medclave.auth.idp_server", "medclave.ops.tracing"): "its traces",
}

PURE_LIBRARIES = frozenset({"attestation", "audit", "crypto", "protocol"})
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "flask", "django")
DATABASE_DRIVERS = ("sqlite3", "psycopg", "psycopg2", "asyncpg", "sqlalchemy")
HTTP_CLIENTS = ("httpx", "requests", "urllib3", "aiohttp", "urllib.request", "http.client")
FORBIDDEN_IN_PURE = {
    **dict.fromkeys(WEB_FRAMEWORKS, "a web framework"),
    **dict.fromkeys(DATABASE_DRIVERS, "a database driver"),
    **dict.fromkeys(HTTP_CLIENTS, "an HTTP client"),
}

# (module, third-party module) -> why a pure library may import it.
ALLOWED_THIRD_PARTY: dict[tuple[str, str], str] = {
    # Issue 5 asked for SQLite storage in medclave.audit; it is one module behind the LogStore
    # interface (audit/store.py), and everything else in audit works on any LogStore.
    ("medclave.audit.store", "sqlite3"): "SqliteLogStore, the embedded LogStore",
    # Issue 17: the log shared by enclave replicas, one more module behind the same interface.
    ("medclave.audit.pgstore", "psycopg"): "PostgresLogStore, the shared LogStore",
    # The online endorsement fetchers: the only code in attestation that reaches the network,
    # used only when a caller passes a provider in VerifyOptions.online (attest verify --online).
    ("medclave.attestation.online", "httpx"): "OnlineEndorsements, behind --online",
    ("medclave.attestation.online.ocsp", "httpx"): "NVIDIA OCSP provider",
    ("medclave.attestation.online.kds", "httpx"): "AMD KDS client (VCEK, chain, CRL)",
}

# Rule 2: (importing part, part that must not appear in its import closure).
SEPARATED: tuple[tuple[str, str], ...] = (
    ("client", "enclave"),
    ("client", "apps"),
    ("enclave", "client"),
)
NEVER_IMPORTED = ("tests", "benchmarks")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a medclave module, or a third-party/stdlib dotted name
    line: int
    how: str  # "import", "in a function", "under TYPE_CHECKING", "by name"

    def where(self, files: Mapping[str, str]) -> str:
        return f"{files.get(self.importer, self.importer)}:{self.line}"


# --- the checker ---------------------------------------------------------------------------


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ROOT


def _in(module: str, scope: str) -> bool:
    return module == scope or module.startswith(scope + ".")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _calls_import_module(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                return True
    return False


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: frozenset[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.found: list[Import] = []
        self._context: list[str] = []

    def _how(self) -> str:
        return self._context[-1] if self._context else "import"

    def _add(self, target: str, line: int, how: str | None = None) -> None:
        self.found.append(Import(self.module, target, line, how or self._how()))

    def _within(self, how: str, node: ast.AST) -> None:
        self._context.append(how)
        self.generic_visit(node)
        self._context.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._within(self._context[-1] if self._context else "in a function", node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._within(self._context[-1] if self._context else "in a function", node)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._context.append("under TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self._context.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".")
            up = node.level - 1
            if up >= len(base_parts):
                raise ValueError(f"{self.module}:{node.lineno}: relative import beyond {ROOT}")
            base = ".".join(base_parts[: len(base_parts) - up] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base == "__future__":
            return
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            if _in(base, ROOT):
                # ``from pkg import mod`` imports the module, ``from mod import name`` the module.
                self._add(candidate if candidate in self.known else base, node.lineno)
            else:
                # Outside medclave the name may be a module (``from urllib import request``);
                # recording it whole lets ``urllib.request`` match while ``urllib`` alone doesn't.
                self._add(base if alias.name == "*" else candidate, node.lineno)


def collect(sources: Mapping[str, tuple[str, bool]]) -> list[Import]:
    """Every import of every module. ``sources``: module name -> (source text, is a package)."""
    known = frozenset(sources)
    found: list[Import] = []
    for module, (text, is_package) in sources.items():
        tree = ast.parse(text, filename=module)
        collector = _Collector(module, is_package, known)
        collector.visit(tree)
        found.extend(collector.found)
        if _calls_import_module(tree):
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    name = node.value.split(":", 1)[0]
                    if name in known and name != ROOT:  # "medclave" alone is a program name
                        found.append(Import(module, name, node.lineno, "by name"))
                elif isinstance(node, ast.JoinedStr) and node.values:
                    head = node.values[0]
                    if isinstance(head, ast.Constant) and isinstance(head.value, str):
                        prefix = head.value.rpartition(".")[0]  # f"medclave.cli.{name}"
                        if prefix in known:
                            found.append(Import(module, prefix, node.lineno, "by name"))
    return found


def _resolve(target: str, known: Iterable[str]) -> str:
    """The longest known module that ``target`` names or lies in (the target itself if none)."""
    best = ""
    for module in known:
        if _in(target, module) and len(module) > len(best):
            best = module
    return best or target


def _allowed(table: Mapping[tuple[str, str], str], importer: str, target: str
             ) -> tuple[str, str] | None:
    for key in table:
        scope, wanted = key
        if _in(importer, scope) and (target == wanted or _in(target, wanted)):
            return key
    return None


def _closure(start: str, edges: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """Every medclave module ``start`` loads, each with one chain of imports leading to it.
    Loading ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too, so parents are edges."""
    paths: dict[str, list[str]] = {start: [start]}
    todo = [start]
    while todo:
        current = todo.pop()
        nexts = set(edges.get(current, ()))
        pieces = current.split(".")
        nexts.update(".".join(pieces[:i]) for i in range(1, len(pieces)))
        for nxt in sorted(nexts):
            if nxt not in paths and nxt in edges:
                paths[nxt] = [*paths[current], nxt]
                todo.append(nxt)
    return paths


@dataclass
class Report:
    violations: list[str]
    unused_allowances: list[str]


def check(sources: Mapping[str, tuple[str, bool]], files: Mapping[str, str] | None = None,
          *, allowed: Mapping[tuple[str, str], str] = ALLOWED_IMPORTS,
          allowed_third_party: Mapping[tuple[str, str], str] = ALLOWED_THIRD_PARTY) -> Report:
    files = files or {}
    known = frozenset(sources)
    imports = collect(sources)
    out: list[str] = []
    used: set[tuple[str, str]] = set()

    for module in sorted(known):
        if part_of(module) not in LAYERS:
            out.append(f"{files.get(module, module)}: {module} belongs to no part of LAYERS: "
                       "give its part a layer here and in docs/architecture.md")

    edges: dict[str, set[str]] = {m: set() for m in known}
    for imp in imports:
        src_part = part_of(imp.importer)
        top = imp.target.split(".")[0]
        if top in NEVER_IMPORTED:
            out.append(f"{imp.where(files)}: {imp.importer} imports {imp.target} ({imp.how}): "
                       "the library never imports the tests or the benchmarks")
        if not _in(imp.target, ROOT):
            if src_part in PURE_LIBRARIES:
                for banned, what in FORBIDDEN_IN_PURE.items():
                    if _in(imp.target, banned):
                        key = (imp.importer, banned)
                        if key in allowed_third_party:
                            used.add(key)
                        else:
                            out.append(f"{imp.where(files)}: {imp.importer} imports {imp.target} "
                                       f"({imp.how}): {src_part} is a pure library and imports "
                                       f"no {what.split(' ', 1)[1]}")
            continue
        target = _resolve(imp.target, known)
        edges.setdefault(imp.importer, set()).add(target)
        dst_part = part_of(target)
        if dst_part == src_part or dst_part not in LAYERS or src_part not in LAYERS:
            continue
        if LAYERS[dst_part] < LAYERS[src_part] or (src_part, dst_part) in WITHIN_LAYER:
            continue
        allowance = _allowed(allowed, imp.importer, target)
        if allowance is not None:
            used.add(allowance)
            continue
        direction = "its own layer" if LAYERS[dst_part] == LAYERS[src_part] else "a higher layer"
        out.append(f"{imp.where(files)}: {imp.importer} imports {target} ({imp.how}): "
                   f"{src_part} (layer {LAYERS[src_part]:g}) may not import {dst_part}, "
                   f"on {direction} (layer {LAYERS[dst_part]:g})")

    for src_part, banned_part in SEPARATED:
        for module in sorted(m for m in known if part_of(m) == src_part):
            reach = _closure(module, edges)
            for reached, chain in sorted(reach.items(), key=lambda kv: (len(kv[1]), kv[0])):
                if part_of(reached) == banned_part:
                    out.append(f"{files.get(module, module)}: {module} loads {reached} through "
                               f"{' -> '.join(chain)}: {src_part} never imports {banned_part}")
                    break

    unused = [f"{key} ({why})" for table in (allowed, allowed_third_party)
              for key, why in table.items() if key not in used]
    return Report(list(dict.fromkeys(out)), unused)  # one line per import, not per name


def read_tree(src: Path) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    sources: dict[str, tuple[str, bool]] = {}
    files: dict[str, str] = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        name = module_name(path, src)
        sources[name] = (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        files[name] = str(path.relative_to(src.parent))
    return sources, files


# --- the real tree -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    sources, files = read_tree(SRC)
    assert len(sources) > 100, f"found only {len(sources)} modules under {SRC}"
    return sources, files


def test_every_import_follows_the_layer_rules(
        tree: tuple[dict[str, tuple[str, bool]], dict[str, str]]) -> None:
    report = check(*tree)
    assert not report.violations, (
        "import rules broken (docs/architecture.md, 'Layers and import rules'):\n  "
        + "\n  ".join(report.violations))


def test_every_allowed_exception_is_still_needed(
        tree: tuple[dict[str, tuple[str, bool]], dict[str, str]]) -> None:
    report = check(*tree)
    assert not report.unused_allowances, (
        "allow-list entries no import needs any more: remove them here and in "
        "docs/architecture.md:\n  " + "\n  ".join(report.unused_allowances))


def test_every_part_on_disk_has_a_layer(
        tree: tuple[dict[str, tuple[str, bool]], dict[str, str]]) -> None:
    parts = {part_of(m) for m in tree[0]}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


# The "verifiers import no HTTP client": every module of attestation but the online
# fetchers (attestation.online and its modules, loaded only by whoever builds a provider) loads
# no HTTP client, directly or through anything it imports. The verifiers see the providers only
# through the protocols of attestation.providers.
ONLINE_FETCHERS = frozenset(module for module, _ in ALLOWED_THIRD_PARTY if ".attestation." in module)


def test_verifiers_load_no_http_client(
        tree: tuple[dict[str, tuple[str, bool]], dict[str, str]]) -> None:
    sources, _ = tree
    imports = collect(sources)
    edges: dict[str, set[str]] = {m: set() for m in sources}
    third: dict[str, set[str]] = {m: set() for m in sources}
    for imp in imports:
        if _in(imp.target, ROOT):
            edges[imp.importer].add(_resolve(imp.target, sources))
        else:
            third[imp.importer].add(imp.target)
    offenders = []
    for module in sorted(sources):
        if part_of(module) != "attestation" or module in ONLINE_FETCHERS:
            continue
        for reached, chain in _closure(module, edges).items():
            if any(_in(t, c) for t in third[reached] for c in HTTP_CLIENTS):
                offenders.append(" -> ".join(chain))
                break
    assert not offenders, "\n".join(offenders)


# --- the checker can fail ------------------------------------------------------------------


def _tree(**modules: str) -> dict[str, tuple[str, bool]]:
    """Synthetic sources: keyword ``crypto__bad`` is module ``medclave.crypto.bad``; a name
    ending in ``__init__`` is that package."""
    out: dict[str, tuple[str, bool]] = {ROOT: ("", True)}
    for key, text in modules.items():
        pieces = [ROOT, *key.split("__")]
        is_package = pieces[-1] == "init"
        if is_package:
            pieces.pop()
        for i in range(2, len(pieces)):
            out.setdefault(".".join(pieces[:i]), ("", True))
        out[".".join(pieces)] = (text, is_package)
    return out


def _violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    return check(sources, allowed=ALLOWED_IMPORTS, allowed_third_party=ALLOWED_THIRD_PARTY).violations


def test_checker_passes_a_clean_tree() -> None:
    sources = _tree(
        crypto__hpke="from medclave.errors import CryptoError\n",
        errors="",
        attestation__core="from medclave.crypto import hpke\nimport hashlib\n",
        client__verify="from medclave.attestation import core\nimport httpx\n",
        enclave__boot="from medclave.kbs.client import KbsClient\n",
        kbs__client="from medclave.crypto import hpke\n",
        cli__main="import importlib\nimportlib.import_module('medclave.enclave.boot')\n",
    )
    assert _violations(sources) == []


def test_checker_refuses_an_upward_import_inside_a_function() -> None:
    sources = _tree(
        crypto__bad="def f():\n    from medclave.enclave.service import InferenceService\n",
        enclave__service="",
    )
    [message] = _violations(sources)
    assert message.startswith("medclave.crypto.bad:2: medclave.crypto.bad imports "
                              "medclave.enclave.service (in a function)")
    assert "crypto (layer 1) may not import enclave" in message


def test_checker_refuses_a_same_layer_import_between_parts() -> None:
    sources = _tree(kbs__service="from medclave.enclave import boot\n", enclave__boot="")
    [message] = _violations(sources)
    assert "kbs (layer 4) may not import enclave, on its own layer" in message


def test_checker_counts_type_checking_imports() -> None:
    sources = _tree(
        audit__log="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                   "    from medclave.kbs.client import KbsClient\n",
        kbs__client="",
    )
    [message] = _violations(sources)
    assert "(under TYPE_CHECKING)" in message and "audit (layer 3) may not import kbs" in message


def test_checker_resolves_relative_imports() -> None:
    sources = _tree(attestation__sub__mod="from ...kbs import service\n", kbs__service="")
    [message] = _violations(sources)
    assert "medclave.attestation.sub.mod imports medclave.kbs.service" in message


def test_checker_sees_modules_imported_by_name() -> None:
    sources = _tree(protocol__x="import importlib\n"
                                "M = {'a': 'medclave.cli.main'}\n"
                                "def load(k):\n    return importlib.import_module(M[k])\n",
                    cli__main="")
    [message] = _violations(sources)
    assert "imports medclave.cli.main (by name)" in message


def test_checker_keeps_the_client_and_the_enclave_apart() -> None:
    direct = _tree(client__a="from medclave.enclave import service\n", enclave__service="")
    assert any("client never imports enclave" in v for v in _violations(direct))
    reverse = _tree(enclave__a="from medclave.client import sdk\n", client__sdk="")
    assert any("enclave never imports client" in v for v in _violations(reverse))
    # Through a package __init__ that is allowed to import downward: still refused, since the
    # closure follows the modules Python runs.
    hidden = _tree(client__a="from medclave.auth import tokens\n",
                   auth__init="from medclave.apps import triage\n",
                   auth__tokens="", apps__triage="")
    messages = _violations(hidden)
    assert any("medclave.client.a loads medclave.apps.triage through medclave.client.a -> "
               "medclave.auth.tokens -> medclave.auth -> medclave.apps.triage: "
               "client never imports apps" in v
               for v in messages), messages


def test_checker_refuses_frameworks_and_drivers_in_pure_libraries() -> None:
    sources = _tree(audit__log="import sqlite3\n", protocol__w="from fastapi import FastAPI\n",
                    attestation__v="from urllib import request\n", auth__replay="import sqlite3\n")
    messages = _violations(sources)
    assert len(messages) == 3, messages
    assert any("medclave.audit.log imports sqlite3" in m and "no database driver" in m
               for m in messages)
    assert any("medclave.protocol.w imports fastapi" in m and "no web framework" in m
               for m in messages)
    assert any("imports urllib.request" in m and "no HTTP client" in m for m in messages)


def test_checker_refuses_tests_and_unknown_parts() -> None:
    sources = _tree(crypto__x="from tests.vectors import generate\n", newpart__m="")
    messages = _violations(sources)
    assert any("the library never imports the tests" in m for m in messages)
    assert any("medclave.newpart.m belongs to no part of LAYERS" in m for m in messages)


def test_checker_reports_allowances_nothing_uses() -> None:
    report = check(_tree(errors=""), allowed={("medclave.enclave", "medclave.kbs.gone"): "old"},
                   allowed_third_party={})
    assert report.unused_allowances == ["('medclave.enclave', 'medclave.kbs.gone') (old)"]


def test_allowances_are_not_blanket() -> None:
    # The enclave may use the broker's client, not its service.
    sources = _tree(enclave__boot="from medclave.kbs.service import KeyBroker\n",
                    kbs__service="")
    [message] = _violations(sources)
    assert "medclave.enclave.boot imports medclave.kbs.service" in message
