"""The OCI images (issue 16), read rather than built: no container engine runs here or in CI, so
``deploy/enclave.Dockerfile`` and ``deploy/broker.Dockerfile`` are parsed (``dockerfile-parse``)
and checked for what a security reviewer relies on: multi-stage with no toolchain or source in
the runtime stage; a numeric non-root user; nothing fetched by ADD from a URL and nothing piped
from the network into a shell; no secret in ENV or ARG; the built wheel installed with the
party's own extra; an entrypoint that is a real ``medclave`` command whose arguments parse;
nothing written outside the declared volume (read-only root filesystem); a health check on
the service's port; a base image pinned in one place. Each check is shown to fail on a
Dockerfile altered to break it."""

from __future__ import annotations

import io
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml
from dockerfile_parse import DockerfileParser

from medclave.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Image:
    dockerfile: str
    service: str  # the CLI group and the config file's name
    extra: str  # the party's extra
    env_prefix: str
    compose: str


IMAGES = {
    "enclave": Image("enclave.Dockerfile", "enclave", "enclave", "MEDCLAVE_ENCLAVE_", "enclave"),
    "broker": Image("broker.Dockerfile", "kbs", "broker", "MEDCLAVE_KBS_", "kbs"),
}
PARTIES = {"client", "enclave", "broker", "audit", "fl"}
OPTIONAL = {"otlp"}  # extras any party may add
SECRET_WORDS = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|KEK|PRIVATE|SIGNING_KEY|API_KEY|"
                          r"CREDENTIAL", re.I)
TOOLCHAIN = re.compile(r"\b(build-essential|gcc|g\+\+|cmake|make|apt-get install|pip install|"
                       r"pip wheel)\b")


def stages(text: str) -> list[list[dict[str, Any]]]:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    out: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            out.append([])
        if out and item["instruction"] != "COMMENT":
            out[-1].append(item)
    return out


def instructions(text: str) -> list[dict[str, Any]]:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def of(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def final_envs(text: str) -> dict[str, str]:
    return dict(DockerfileParser(fileobj=io.BytesIO(text.encode())).envs)


def problems(text: str, image: Image) -> list[str]:
    """What a reviewer would object to in ``text`` (the empty list: nothing)."""
    found: list[str] = []
    all_stages = stages(text)
    if len(all_stages) < 2:
        return ["not multi-stage"]
    builder, final = all_stages[0], all_stages[-1]
    names = re.findall(r"\bAS\s+(\S+)", " ".join(of(builder, "FROM")), flags=re.I)
    # Runtime stage: only the builder's environment and the config file come in.
    for value in of(final, "RUN"):
        if TOOLCHAIN.search(value):
            found.append(f"runtime stage builds or installs: {value[:60]}")
    for value in of(final, "COPY") + of(final, "ADD"):
        args = shlex.split(value)
        if not (args[0] == f"--from={names[0]}" if names else False) and not all(
                a.startswith("deploy/config/") for a in args[:-1]):
            found.append(f"runtime stage copies from the build context: {value}")
    # Non-root, numeric (a name could map to uid 0 in the base image's /etc/passwd).
    users = of(final, "USER")
    match = re.fullmatch(r"(\d+):(\d+)", users[-1]) if users else None
    if match is None:
        found.append("final USER is not a numeric uid:gid")
    elif int(match[1]) == 0 or int(match[2]) == 0:
        found.append("final USER is root")
    elif not any(f"--uid {match[1]}" in r for r in of(final, "RUN")):
        found.append("final USER's uid is not the one created")
    # Nothing from the network by ADD, nothing piped from it into a shell.
    for stage in all_stages:
        for value in of(stage, "ADD"):
            if re.search(r"\b(https?|ftp)://|git@|\.git\b", value):
                found.append(f"ADD from a URL: {value}")
        for value in of(stage, "RUN"):
            if re.search(r"\b(curl|wget)\b[^|&;]*\|\s*(ba)?sh\b", value):
                found.append(f"network piped into a shell: {value[:60]}")
    # No secret baked into any layer's ENV or ARG (ARGs before the first FROM included).
    everything = instructions(text)
    for value in of(everything, "ENV") + of(everything, "ARG"):
        for word in shlex.split(value):
            key = word.split("=", 1)[0]
            if SECRET_WORDS.search(key):
                found.append(f"secret-looking build setting {key}")
    # The built wheel, with the party's extra and no other party's.
    installs = [m for r in of(builder, "RUN")
                for m in re.findall(r'pip install "\$\(ls (/\S+\.whl)\)\[([a-z,]+)\]"', r)]
    if not any("pip wheel" in r for r in of(builder, "RUN")) or len(installs) != 1:
        found.append("the built wheel is not what is installed")
    else:
        extras = set(installs[0][1].split(","))
        if image.extra not in extras:
            found.append(f"the {image.extra} extra is not installed")
        if (extras - {image.extra}) & PARTIES or not extras <= PARTIES | OPTIONAL:
            found.append(f"extras beyond the party's: {sorted(extras)}")
    # Read-only root filesystem: writes go only to the declared volume.
    volumes = {v for value in of(final, "VOLUME") for v in json.loads(value)}
    envs = final_envs(text)
    if envs.get("PYTHONDONTWRITEBYTECODE") != "1":
        found.append("Python would write bytecode caches")
    writable = [envs.get(f"{image.env_prefix}DATA_DIR"), envs.get("HOME"),
                *of(final, "WORKDIR")]
    for path in writable:
        if path is None or not any(path == v or path.startswith(v + "/") for v in volumes):
            found.append(f"{path} is written but not a volume")
    for key in envs:
        if SECRET_WORDS.search(key.removeprefix(image.env_prefix)):
            found.append(f"secret in ENV {key}")
    # Liveness and a graceful stop.
    if not of(final, "HEALTHCHECK") or "/healthz" not in of(final, "HEALTHCHECK")[0]:
        found.append("no health check on /healthz")
    if of(final, "STOPSIGNAL") != ["SIGTERM"]:
        found.append("the stop signal is not SIGTERM (the services drain on it)")
    # One place pins the base image.
    froms = [f.split()[0] for s in all_stages for f in of(s, "FROM")]
    if set(froms) != {"${PYTHON_IMAGE}"}:
        found.append(f"base images not from the one PYTHON_IMAGE argument: {froms}")
    return found


def read(image: Image) -> str:
    return (DEPLOY / image.dockerfile).read_text()


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_images_pass_review(name: str) -> None:
    assert problems(read(IMAGES[name]), IMAGES[name]) == []


BROKEN = [
    ("one stage", lambda t: t[t.index("FROM ${PYTHON_IMAGE}\n"):], "not multi-stage"),
    ("root", lambda t: t.replace("USER 10001:10001", "USER 0:0"), "final USER is root"),
    ("named user", lambda t: t.replace("USER 10001:10001", "USER medclave"), "numeric"),
    ("remote ADD", lambda t: t.replace("COPY deploy/config/", "ADD https://example.org/x.tgz "
                                       "/opt/x\nCOPY deploy/config/"), "ADD from a URL"),
    ("curl | sh", lambda t: t.replace("RUN python -m venv", "RUN curl -s https://x.example/i "
                                      "| sh && python -m venv"), "piped into a shell"),
    ("secret ENV", lambda t: t.replace("HOME=/var/lib/medclave", "HOME=/var/lib/medclave "
                                       "MEDCLAVE_KBS_KEK=c2VjcmV0"), "secret"),
    ("secret ARG", lambda t: t.replace("ARG PYTHON_IMAGE", "ARG SIGNING_KEY=x\nARG PYTHON_IMAGE"),
     "secret-looking"),
    ("source tree", lambda t: t.replace("COPY --from=builder /opt/medclave /opt/medclave",
                                        "COPY --from=builder /opt/medclave /opt/medclave\n"
                                        "COPY src /src"), "copies from the build context"),
    ("toolchain", lambda t: t.replace("USER 10001:10001", "RUN apt-get install -y gcc\n"
                                      "USER 10001:10001"), "builds or installs"),
    ("bytecode", lambda t: t.replace("PYTHONDONTWRITEBYTECODE=1", "PYTHONDONTWRITEBYTECODE=0"),
     "bytecode"),
    ("writes outside", lambda t: t.replace("WORKDIR /var/lib/medclave", "WORKDIR /srv"),
     "/srv is written"),
    ("no healthcheck", lambda t: re.sub(r"HEALTHCHECK[^\n]*\\\n[^\n]*\n", "", t), "health"),
    ("unpinned base", lambda t: t.replace("FROM ${PYTHON_IMAGE}\n", "FROM python:3.11\n"),
     "PYTHON_IMAGE"),
    ("source install", lambda t: t.replace('"$(ls /dist/medclave-*.whl)', '"/src'),
     "built wheel"),
]


@pytest.mark.parametrize(("what", "mutate", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_check_catches_what_it_is_for(what: str, mutate: Any, expected: str) -> None:
    image = IMAGES["broker"]
    text = mutate(read(image))
    assert text != read(image), what
    assert any(expected in p for p in problems(text, image)), problems(text, image)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_wrong_party_extra_is_caught(name: str) -> None:
    image = IMAGES[name]
    other = "broker" if image.extra == "enclave" else "enclave"
    text = read(image).replace(f"[{image.extra},otlp]", f"[{other},otlp]")
    assert any("extra is not installed" in p for p in problems(text, image))
    text = read(image).replace(f"[{image.extra},otlp]", f"[{image.extra},client]")
    assert any("beyond the party's" in p for p in problems(text, image))
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    installed = re.search(r"whl\)\[([a-z,]+)\]", read(image))
    assert installed is not None and set(installed[1].split(",")) <= extras


def _resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command ``argv`` names in the real typer app, and its remaining arguments."""
    command: click.Command = typer.main.get_command(app)
    args = list(argv)
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"no command {args[0]!r} in `medclave`"
        command, args = sub, args[1:]
    return command, args


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_entrypoint_is_a_real_command_with_the_shipped_config(name: str) -> None:
    image = IMAGES[name]
    final = stages(read(image))[-1]
    entry = json.loads(of(final, "ENTRYPOINT")[0])
    assert entry[0] == "medclave"
    assert PYPROJECT["project"]["scripts"]["medclave"] == "medclave.cli.main:app"
    command, rest = _resolve(entry[1:])
    assert not isinstance(command, click.Group) and command.name == "serve"
    ctx = command.make_context("serve", list(rest))  # the arguments parse, as the image runs it
    config = f"/etc/medclave/{image.service}.toml"
    assert str(ctx.params["config"]) == config
    copied = [shlex.split(v) for v in of(final, "COPY")]
    assert [f"deploy/config/{image.service}.toml", config] in copied
    with pytest.raises(AssertionError, match="no command"):
        _resolve([image.service, "serv"])


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_ports_probe_and_compose_agree(name: str) -> None:
    image = IMAGES[name]
    text = read(image)
    final = stages(text)[-1]
    config = tomllib.loads((DEPLOY / "config" / f"{image.service}.toml").read_text())
    exposed = {int(p) for v in of(final, "EXPOSE") for p in v.split()}
    assert exposed == {config["port"], config["metrics_port"]}
    probe = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", of(final, "HEALTHCHECK")[0])
    assert probe is not None and int(probe[1]) == config["port"]
    envs = final_envs(text)
    assert config["data_dir"] == envs[f"{image.env_prefix}DATA_DIR"]
    volume = json.loads(of(final, "VOLUME")[0])[0]
    runs = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][image.compose]
    assert runs["read_only"] is True and runs["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in runs["security_opt"] and "/tmp" in runs["tmpfs"]
    assert runs["user"] == of(final, "USER")[-1]
    assert [v.split(":", 1)[1] for v in runs["volumes"]] == [volume]
    for args in (shlex.split(v) for s in stages(text) for v in of(s, "COPY")):
        if not args[0].startswith("--from="):  # from the build context: the repository's
            for source in args[:-1]:
                assert (ROOT / source).exists(), source


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_base_image_argument_is_a_python_the_project_supports(name: str) -> None:
    argument = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", read(IMAGES[name]), flags=re.M)
    assert argument is not None
    image, _, digest = argument[1].partition("@")
    assert re.fullmatch(r"python:3\.(11|12)-slim-\w+", image)
    assert digest == "" or re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
