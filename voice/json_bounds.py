"""Bounds on tenant-supplied JSON: nesting depth and string length, checked without recursion.

A tenant's JSON (an API body, an assistant file, an `assistant-request` answer) reaches code
that walks it recursively: pydantic, the secret sealing in `storage.crypto`, `json.dumps`. A
document nested a few hundred levels deep turns each of those into a RecursionError, raised
after the row was written (issue 9, finding 7). So the depth is checked first, by code that
cannot itself recurse: `text_depth` scans the raw text with one regular expression, and
`check_json` walks a parsed value with an explicit stack.

The limits are AVA's, not Vapi's (Vapi documents none): 32 levels is more than any assistant,
tool schema or metadata needs (a Vapi assistant is about 6 deep; a JSON Schema for a tool's
parameters rarely passes 10), and 100 000 characters is more than any one field needs (the
largest, a system prompt, is bounded at that by `voice.assistant`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_STRING_CHARS",
    "JsonBounds",
    "JsonTooComplex",
    "check_json",
    "text_depth",
]

MAX_DEPTH = 32
MAX_STRING_CHARS = 100_000

# A JSON string token (escapes included; possessive, so it never backtracks) or a bracket.
# Brackets inside strings are consumed with their string and never counted.
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")
_SHOWN_PARTS = 6  # of a path in an error message; a 33-level path is noise


class JsonTooComplex(ValueError):
    """A JSON value past a bound; `path` is where (`metadata.a.b`, `body` for the top)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class JsonBounds:
    max_depth: int = MAX_DEPTH
    max_string_chars: int = MAX_STRING_CHARS


_DEFAULT = JsonBounds()


def text_depth(raw: bytes, stop_above: int) -> int:
    """The deepest bracket nesting of JSON text, counting only brackets outside strings; stops
    scanning once it passes `stop_above` (returns that depth). Linear time, no recursion; text
    that is not JSON gets some number, which is fine: it is refused when parsed anyway."""
    depth = deepest = 0
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if len(token) != 1:
            continue  # a string
        if token[0] in _OPENERS:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    break
        else:
            depth = max(0, depth - 1)
    return deepest


def _path(parts: Sequence[str | int]) -> str:
    shown = [str(p) for p in parts[:_SHOWN_PARTS]]
    text = ".".join(shown) or "body"
    return text + ".…" if len(parts) > _SHOWN_PARTS else text


def check_json(value: Any, bounds: JsonBounds = _DEFAULT, *, at: Sequence[str] = ()) -> None:
    """Raise `JsonTooComplex` naming the first place `value` (parsed JSON: dicts, lists,
    scalars) nests deeper than `bounds.max_depth` containers or holds a string (a key too)
    longer than `bounds.max_string_chars`. The top-level container is depth 1."""
    limit, longest = bounds.max_depth, bounds.max_string_chars
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, tuple(at), 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if len(item) > longest:
                raise JsonTooComplex(_path(path), f"string longer than {longest} characters")
            continue
        if isinstance(item, dict):
            children: list[tuple[str | int, Any]] = []
            for key, child in item.items():
                if isinstance(key, str) and len(key) > longest:
                    raise JsonTooComplex(_path(path), f"key longer than {longest} characters")
                children.append((key, child))
        elif isinstance(item, list | tuple):
            children = list(enumerate(item))
        else:
            continue
        if depth + 1 > limit:
            raise JsonTooComplex(_path(path), f"nested deeper than {limit} levels")
        stack.extend((child, (*path, key), depth + 1) for key, child in children)
