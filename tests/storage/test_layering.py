"""storage/ sits above voice/ only; every module declares `__all__` and reads no environment."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

STORAGE = Path(__file__).resolve().parents[2] / "storage"
MODULES = sorted(p for p in STORAGE.rglob("*.py") if "migrations" not in p.parts)
ALLOWED_PROJECT_IMPORTS = {"voice.events", "voice.types", "voice.assistant", "voice.recording_urls"}
PROJECT_PACKAGES = ("voice", "media", "control", "benchmarks", "assistants")


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(STORAGE.rglob("*.py")), ids=lambda p: p.name)
def test_storage_imports_only_voice_data_modules(path: Path) -> None:
    project = {n for n in imports(path) if n.split(".")[0] in PROJECT_PACKAGES}
    assert project <= ALLOWED_PROJECT_IMPORTS, f"{path.name} imports {project}"
    assert "os.environ" not in path.read_text() and "getenv" not in path.read_text()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_every_module_declares_all(path: Path) -> None:
    name = ".".join(path.relative_to(STORAGE.parent).with_suffix("").parts)
    module = importlib.import_module(name.removesuffix(".__init__"))
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
