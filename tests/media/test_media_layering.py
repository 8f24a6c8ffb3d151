"""media/ is the bottom layer, and its cores are sans-I/O; every module declares `__all__`."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[2] / "media"
ALL_MODULES = sorted(MEDIA.rglob("*.py"))
# The I/O shells; everything else in media/ must stay free of event loops and sockets.
IO_SHELLS = {"media/twilio/websocket.py", "media/twilio/caller.py", "media/webrtc/peer.py"}
UPPER_LAYERS = ("voice", "control", "storage", "benchmarks")
IO_LIBRARIES = (
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "http",
    "urllib.request",
    "websockets",
    "starlette",
    "fastapi",
    "uvicorn",
    "httpx",
    "aiohttp",
    "anyio",
)


def rel(path: Path) -> str:
    return path.relative_to(MEDIA.parent).as_posix()


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("path", ALL_MODULES, ids=rel)
def test_media_imports_no_upper_layer(path: Path) -> None:
    bad = {name for name in imported_modules(path) if within(name, UPPER_LAYERS)}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", [p for p in ALL_MODULES if rel(p) not in IO_SHELLS], ids=rel)
def test_sans_io_modules_import_no_io(path: Path) -> None:
    bad = {name for name in imported_modules(path) if within(name, IO_LIBRARIES)}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


SANS_IO_MODULES = [
    "media.framing",
    "media.pacing",
    "media.rate_guard",
    "media.twilio",
    "media.twilio.messages",
    "media.twilio.protocol",
    "media.twilio.phone",
    "media.twilio.signature",
    "media.twilio.twiml",
]


@pytest.mark.parametrize("name", SANS_IO_MODULES)
def test_public_api_is_declared(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
