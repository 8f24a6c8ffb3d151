"""Turn-model inference yields the core to the media loop: its worker thread runs niced."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from voice.engines import SmartTurn
from voice.engines.executor import BACKGROUND_NICENESS

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_inference_lowers_its_worker_thread_only(smart_turn_model: SmartTurn) -> None:
    main_before = nice_of_this_thread()
    pcm = b"\x00\x01" * 8000

    def infer_twice() -> tuple[int, int, int]:
        before = nice_of_this_thread()
        smart_turn_model.completion_probability(pcm, 8000)
        once = nice_of_this_thread()
        smart_turn_model.completion_probability(pcm, 8000)  # lowered once, not again
        return before, once, nice_of_this_thread()

    with ThreadPoolExecutor(1) as pool:
        before, once, twice = pool.submit(infer_twice).result()
    assert once == min(19, before + BACKGROUND_NICENESS) and twice == once
    smart_turn_model.completion_probability(pcm, 8000)  # on the main thread: left alone
    assert nice_of_this_thread() == main_before
