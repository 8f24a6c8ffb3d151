"""Shared plumbing for the offline engines: ONNX sessions and the inference executor.

One small thread pool runs all CPU-heavy inference (Piper, Whisper, smart-turn) so a burst of
calls queues instead of oversubscribing the cores; each ONNX session uses one thread because on
small machines two intra-op threads per session are slower than one (measured, design §3).

The pool's queue is bounded too (`voice.job_pool.BoundedExecutor`, which says what happens on
overflow): a stock ThreadPoolExecutor queues without limit, so a flood of work (a tenant's long
greeting, a stream sending minutes of audio at once, issue 9) grew memory and delayed every
other call's inference behind it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import onnxruntime as ort

from voice.errors import ConfigError
from voice.job_pool import MAX_PENDING_JOBS, BoundedExecutor, InferenceBusy

__all__ = [
    "BACKGROUND_NICENESS",
    "MAX_PENDING_JOBS",
    "BoundedExecutor",
    "InferenceBusy",
    "background_priority",
    "inference_executor",
    "load_onnx_session",
]

# How much lower than the event loop an inference worker thread runs (Linux nice steps).
BACKGROUND_NICENESS = 10

_lowered = threading.local()


def background_priority() -> None:
    """Lower the calling worker thread's scheduling priority, once per thread.

    The event loop paces every call's audio in 20 ms frames; a 30–50 ms turn-model inference in
    a worker thread on the same core must not delay it, or the caller hears gaps (measured: at
    50 calls on one core, outbound gaps and a 140 ms server-added p99 with equal priorities).
    The main thread (the event loop, if it ever calls an engine inline) is left alone. Linux
    schedules threads individually, so `setpriority` on the thread id affects only this thread;
    elsewhere, or without permission, it is a no-op.
    """
    if getattr(_lowered, "done", False) or threading.current_thread() is threading.main_thread():
        return
    _lowered.done = True
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICENESS
        )
    except (OSError, AttributeError):
        pass  # not Linux, or not allowed: run at normal priority


def inference_executor(max_workers: int = 2) -> BoundedExecutor:
    """The bounded pool the engines share; size it to the cores left after the event loop."""
    return BoundedExecutor(max_workers, thread_name_prefix="ava-infer")


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
