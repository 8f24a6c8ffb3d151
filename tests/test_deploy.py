"""The deployment files agree with the code: no docker engine here, so check what can be checked.

Every setting is documented in `.env.example`; the compose file only sets settings that exist;
every path the Dockerfile copies exists and is not excluded from the build context.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import yaml
from pydantic import AliasChoices

from control.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _env_names() -> dict[str, str]:
    """Environment variable → settings field, as pydantic-settings resolves them."""
    names: dict[str, str] = {}
    prefix = Settings.model_config.get("env_prefix", "")
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update({str(choice).upper(): field_name for choice in alias.choices})
        elif isinstance(alias, str):
            names[alias.upper()] = field_name
        else:
            names[f"{prefix}{field_name}".upper()] = field_name
    return names


def test_env_example_documents_every_setting() -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    names = _env_names()
    covered = {field for name, field in names.items() if name in documented}
    missing = set(names.values()) - covered
    assert not missing, f"settings not in .env.example: {sorted(missing)}"


def test_env_example_names_only_real_settings() -> None:
    known = set(_env_names())
    documented = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    unknown = [name for name in documented if name not in known]
    assert not unknown, f".env.example names settings AVA does not read: {unknown}"


def test_compose_builds_from_the_repository_and_sets_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    # Every service built from the repository (the AVA nodes, the migration) is checked.
    built = [service for service in compose["services"].values() if "build" in service]
    assert len(built) >= 2
    for ava in built:
        context = (ROOT / "docker" / ava["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / ava["build"]["dockerfile"]).is_file()
        known = set(_env_names())
        assert set(ava["environment"]) <= known, set(ava["environment"]) - known
        # Every service the server is pointed at exists and is waited for.
        assert set(ava["depends_on"]) <= set(compose["services"])
        for name, condition in ava["depends_on"].items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in compose["services"][name]
        database = ava["environment"]["AVA_DATABASE_URL"]
        assert database.startswith("postgresql+asyncpg://")


def _dockerignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, p)
        or fnmatch.fnmatch(path, p.removeprefix("**/"))
        or path.startswith(p.rstrip("/") + "/")
        for p in patterns
    )


def test_dockerfile_copies_only_what_the_context_holds() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            *srcs, _dest = shlex.split(line)[1:]
            sources.extend(s for s in srcs if not s.startswith("--"))
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, ignore), source
    # Every package the project installs is copied into the image.
    for package in ("voice", "media", "control", "storage", "benchmarks"):
        assert package in sources, package
    # The image migrates before it serves, so a new image never meets an old schema.
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD"))
    assert "ava db upgrade" in cmd and "ava serve" in cmd
