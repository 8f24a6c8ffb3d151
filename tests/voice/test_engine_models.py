"""Bundled model files: location, pinned hashes, the reassembled Whisper model and its stamps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.voice.conftest import truncated_copy
from voice.engines import models
from voice.engines.models import (
    piper_voice_files,
    silero_vad_path,
    smart_turn_path,
    verify_file,
    whisper_model_dir,
)
from voice.errors import ConfigError


def test_bundled_models_are_found_and_verified() -> None:
    model, config = piper_voice_files()
    assert model.name == "en_US-joe-medium.onnx" and config.name.endswith(".onnx.json")
    assert silero_vad_path().name == "silero_vad.onnx"
    assert smart_turn_path().name == "smart-turn-v3.2-cpu.onnx"


def test_flipped_byte_in_a_copy_is_rejected_naming_the_package(tmp_path: Path) -> None:
    copy = tmp_path / "silero_vad.onnx"
    shutil.copyfile(silero_vad_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    pinned = models._SILERO
    with pytest.raises(ConfigError, match=r"sha256.*pipecat-ai==1\.14\.0"):
        verify_file(
            copy,
            pinned.sha256,
            size=pinned.size,
            what=models._reinstall_hint(pinned.package, pinned.version),
        )


def test_truncated_copy_is_rejected_by_size_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = truncated_copy(smart_turn_path(), tmp_path)

    def no_hashing(path: Path) -> str:
        raise AssertionError("size mismatch must not need a hash")

    monkeypatch.setattr(models, "_sha256", no_hashing)
    with pytest.raises(ConfigError, match="bytes, expected"):
        verify_file(copy, models._SMART_TURN.sha256, size=models._SMART_TURN.size, what="x")


def test_missing_package_says_what_to_install() -> None:
    missing = models._Pinned("no-such-model-package", "9.9", "x/model.onnx", 1, "0" * 64)
    with pytest.raises(ConfigError, match="pip install no-such-model-package==9.9"):
        models._locate(missing)


def test_whisper_dir_is_built_once_stamped_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = whisper_model_dir(tmp_path)
    names = sorted(p.name for p in target.iterdir())
    assert names == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    assert (tmp_path / "model-stamps.json").is_file()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temp files left

    # A new process (empty memo) trusts the stamp instead of re-hashing 145 MB.
    monkeypatch.setattr(models, "_verified", set())
    real_sha256 = models._sha256

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(models, "_sha256", no_hashing)
    assert whisper_model_dir(tmp_path) == target

    # Our cached copy gets damaged (same size, new mtime): it is rebuilt from the packages.
    monkeypatch.setattr(models, "_sha256", real_sha256)
    model_bin = target / "model.bin"
    with model_bin.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    assert whisper_model_dir(tmp_path) == target
    assert models._sha256(model_bin) == models._WHISPER_BIN_SHA256
