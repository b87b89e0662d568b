"""docs/ stays true to the code: everything it names exists, and every module is indexed.

Checked in every ``docs/*.md``: relative links and their anchors; paths (``kbs/signing.py``,
``tests/...::test_name``); dotted names under ``medclave`` (``kbs.client.KbsClient``) and error
codes (``kbs.answer_unauthenticated``); snake_case names (settings fields, runtime keys), which
must occur in the source; ``MEDCLAVE_*`` settings; ``medclave`` commands and their options; and,
in docs/index.md, that every module under ``src/medclave`` has a row whose entry points it
defines.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import click
import pytest
import typer
from pydantic_settings import BaseSettings

from medclave.auth.idp_server import IdpSettings
from medclave.cli.main import app
from medclave.client.proxy_settings import ProxySettings
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import CATALOGUE
from medclave.kbs.settings import KbsSettings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PACKAGE = REPO / "src" / "medclave"
PAGES = sorted(DOCS.glob("*.md"))
FAMILIES = {code.split(".", 1)[0] for code in CATALOGUE}
SETTINGS: dict[str, type[BaseSettings]] = {"MEDCLAVE_ENCLAVE_": EnclaveSettings, "MEDCLAVE_KBS_": KbsSettings,
            "MEDCLAVE_PROXY_": ProxySettings, "MEDCLAVE_IDP_": IdpSettings}

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`([^`]+)`")  # a code span may wrap onto the next line
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
_IDENTIFIER = re.compile(r"^_*[A-Z][A-Za-z0-9_]+$|^_+\w+$")  # CamelCase, CONSTANT, _private
_PATH = re.compile(r"^[\w.*-]+(/[\w.*-]*)*(\.py|\.md|\.cedar|/)(::\w+)?$")
_SETTING = re.compile(r"MEDCLAVE_[A-Z0-9_]+\*?")


def _prose(text: str) -> str:
    return _FENCE.sub("", text)


def _inline_code(text: str) -> Iterator[str]:
    for span in _CODE.findall(_prose(text)):
        yield " ".join(span.split())


@cache
def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@cache
def _top_level_names(path: Path) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                # Names a module exports lazily (a module __getattr__) are listed here.
                names.update(ast.literal_eval(node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


@cache
def _source_strings() -> frozenset[str]:
    """Every string constant in the library (file names such as ``model.sealed``)."""
    return frozenset(node.value for path in _modules().values()
                     for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))


@cache
def _source_words() -> frozenset[str]:
    """Every identifier and string word in the library: what a snake_case name must be."""
    words: set[str] = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                words.add(node.id)
            elif isinstance(node, ast.Attribute):
                words.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                words.add(node.name)
            elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg):
                words.add(str(node.arg))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(re.findall(r"\w+", node.value))
    return frozenset(words)


def _name_problem(token: str) -> str | None:
    """Why a dotted name does not exist, or None (also None for names that are not ours)."""
    if token in CATALOGUE or token in _source_strings():
        return None
    modules = _modules()
    full = token if token.startswith("medclave.") else f"medclave.{token}"
    pieces = full.split(".")
    for cut in range(len(pieces), 1, -1):
        module = ".".join(pieces[:cut])
        if module in modules:
            rest = pieces[cut:]
            if rest and rest[0] not in _top_level_names(modules[module]):
                return f"{module} defines no {rest[0]}"
            return None
    if pieces[1] in FAMILIES and len(pieces) == 3:
        return "not a module, a name in one, or an error code in errors.CATALOGUE"
    return None


def _path_problem(token: str) -> str | None:
    path, _, function = token.partition("::")
    for base in (REPO, REPO / "src", PACKAGE):
        found = sorted(base.glob(path)) if "*" in path else [base / path] if (base / path).exists() else []
        if found:
            if function and f"def {function}(" not in found[0].read_text(encoding="utf-8"):
                return f"{path} has no {function}"
            return None
    return "no such file or folder (from the repository root, src/ or src/medclave/)"


def _slug(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _prose(page.read_text(encoding="utf-8")).splitlines()
            if line.startswith("#")}


@cache
def _cli() -> click.Command:
    return typer.main.get_command(app)


def _options_of(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def _all_options() -> set[str]:
    found: set[str] = set()
    todo = [_cli()]
    while todo:
        command = todo.pop()
        found |= _options_of(command)
        if isinstance(command, click.Group):
            todo.extend(command.commands.values())
    return found


def _command_problem(words: list[str]) -> str | None:
    command = _cli()
    walked = 0
    for word in words:
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            walked += 1
        elif word.startswith("--"):
            flag = word.split("=", 1)[0]
            if flag not in _options_of(command):
                return f"{command.name} has no option {flag}"
        elif isinstance(command, click.Group) and not command.invoke_without_command:
            return "no such command"
    return None if walked else "no such command"


def _commands(text: str) -> Iterator[list[str]]:
    """Every ``medclave …`` in inline code (alternatives ``a|b`` expanded) and in fences."""
    candidates = list(_inline_code(text))
    for block in _FENCE.findall(text):
        candidates.extend(line.strip().removeprefix(".venv/bin/") for line in block.splitlines())
    for candidate in candidates:
        if not candidate.startswith("medclave "):
            continue
        words = candidate.split()[1:]
        variants: list[list[str]] = [[]]
        for word in words:
            options = word.split("|") if "|" in word and not word.startswith("-") else [word]
            variants = [[*v, o] for v in variants for o in options]
        yield from variants


def _command_table_rows(text: str) -> Iterator[list[list[str]]]:
    """The Commands table of index.md. A later cell of a row is a command of the row's group
    (``kbs decisions``, ``key show``) or a sibling of the command before it (``rotate`` after
    ``kbs resource put``): each is given as alternatives, one of which must exist."""
    section = text.split("## Commands", 1)[-1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if not line.startswith("| `medclave "):
            continue
        tokens = _CODE.findall(line.split("|")[1])
        previous = tokens[0].split()[1:]
        group = previous[0]
        yield [previous]
        for token in tokens[1:]:
            words = token.split()
            if words[0] == group:
                previous = words
                yield [words]
            else:
                yield [[group, *words], [*previous[:-1], *words]]


def _problems(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    found: list[str] = []
    for target in _LINK.findall(_prose(text)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        where, _, anchor = target.partition("#")
        linked = (page.parent / where).resolve() if where else page
        if not linked.exists():
            found.append(f"link {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            found.append(f"link {target}: no such heading")
    for token in _inline_code(text):
        token = token.strip()
        problem = None
        if _PATH.match(token) and not token.startswith("/"):
            problem = _path_problem(token)
        elif _DOTTED.match(token):
            problem = _name_problem(token)
        elif ((_SNAKE.match(token) or _IDENTIFIER.match(token)) and not _SETTING.fullmatch(token)
              and token not in _source_words()):
            problem = "named nowhere in src/medclave"
        elif re.fullmatch(r"--[a-z][a-z0-9-]*", token) and token not in _all_options():
            problem = "no medclave command has this option"
        if problem:
            found.append(f"`{token}`: {problem}")
    for name in set(_SETTING.findall(text)):
        prefix = next((p for p in SETTINGS if name.startswith(p)), None)
        if name.endswith("*"):
            ok = prefix is not None and name[:-1] == prefix
        elif prefix is not None and name[len(prefix):].lower() in SETTINGS[prefix].model_fields:
            ok = True
        else:
            where = [*_modules().values(), REPO / "Makefile", REPO / "tests" / "conftest.py"]
            ok = any(name in p.read_text(encoding="utf-8") for p in where)
        if not ok:
            found.append(f"{name}: no such setting or environment variable")
    commands = [[words] for words in _commands(text)]
    if page.name == "index.md":
        commands.extend(_command_table_rows(text))
    for alternatives in commands:
        problem = next(filter(None, map(_command_problem, alternatives)), None)
        if problem and all(_command_problem(a) for a in alternatives):
            found.append(f"`medclave {' '.join(alternatives[0])}`: {problem}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_everything_a_page_names_exists(page: Path) -> None:
    problems = _problems(page)
    assert not problems, f"{page.name}:\n  " + "\n  ".join(problems)


def test_the_docs_pages_are_there() -> None:
    assert {"index.md", "architecture.md", "security.md"} <= {p.name for p in PAGES}


def _index_rows() -> dict[str, list[str]]:
    """Module path -> the entry points its row in index.md names."""
    rows: dict[str, list[str]] = {}
    for line in (DOCS / "index.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[\w/]+(\.py|/)`", cells[0]):
            rows[cells[0].strip("`")] = _CODE.findall(cells[2])
    return rows


def test_every_module_is_in_the_index() -> None:
    rows = _index_rows()
    missing = sorted(str(p.relative_to(PACKAGE)) for p in _modules().values()
                     if str(p.relative_to(PACKAGE)) not in rows)
    assert not missing, "modules without a row in docs/index.md:\n  " + "\n  ".join(missing)


def test_every_entry_point_in_the_index_is_defined_there() -> None:
    wrong: list[str] = []
    for module, names in _index_rows().items():
        path = PACKAGE / module
        if path.suffix != ".py":
            assert path.is_dir(), module
            continue
        wrong.extend(f"{module}: {name}" for name in names if name not in _top_level_names(path))
    assert not wrong, "entry points the module does not define:\n  " + "\n  ".join(wrong)


def test_the_checker_catches_what_does_not_exist(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "See [x](missing.md), [y](#nowhere), `kbs/gone.py`, `kbs.client.NoSuchThing`,\n"
        "`policy.no_such_code`, `not_a_setting_anywhere`, `NoSuchClass`, `--no-such-flag`,\n"
        "MEDCLAVE_ENCLAVE_NOPE,\n"
        "`medclave kbs explode`, `medclave audit verify --no-such`,\n"
        "`tests/unit/test_docs.py::test_nothing_of_the_kind`.\n", encoding="utf-8")
    problems = "\n".join(_problems(page))
    for expected in ("link missing.md: no such file", "link #nowhere: no such heading",
                     "`kbs/gone.py`: no such file", "medclave.kbs.client defines no NoSuchThing",
                     "`policy.no_such_code`: not a module", "`NoSuchClass`: named nowhere",
                     "`not_a_setting_anywhere`: named nowhere",
                     "`--no-such-flag`: no medclave command", "MEDCLAVE_ENCLAVE_NOPE: no such",
                     "`medclave kbs explode`: no such command",
                     "`medclave audit verify --no-such`: verify has no option --no-such",
                     "has no test_nothing_of_the_kind"):
        assert expected in problems, (expected, problems)


def test_the_checker_passes_what_exists(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "`kbs/signing.py`, `kbs.client.KbsClient`, `audit.rollback`, `kbs_keys`, `--kbs-key`,\n"
        "MEDCLAVE_ENCLAVE_AUDIT_ORIGIN, `MEDCLAVE_KBS_*`, `medclave audit verify --checkpoint F`,\n"
        "`medclave kbs resource|policy|decisions`,\n"
        "`tests/unit/test_docs.py::test_the_checker_passes_what_exists`.\n",
        encoding="utf-8")
    assert _problems(page) == []
