"""Shared plumbing for the offline engines: ONNX sessions and the inference executor.

One small thread pool runs all CPU-heavy inference (Piper, Whisper, smart-turn) so a burst of
calls queues instead of oversubscribing the cores; each ONNX session uses one thread because on
small machines two intra-op threads per session are slower than one (measured, design §3).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnxruntime as ort

from voice.errors import ConfigError

__all__ = ["inference_executor", "load_onnx_session"]


def inference_executor(max_workers: int = 2) -> ThreadPoolExecutor:
    """The bounded pool the engines share; size it to the cores left after the event loop."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ava-infer")


def load_onnx_session(path: Path, *, what: str) -> ort.InferenceSession:
    """A single-threaded CPU session; a missing or corrupt file becomes a ConfigError."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime logs graph warnings to stderr at level 2; keep them out of the service log.
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped exceptions for bad files
        raise ConfigError(
            f"cannot load the {what} model from {path}: {exc}; check the path or reinstall the "
            "package that ships it"
        ) from exc
