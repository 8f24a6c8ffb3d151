"""`BoundedExecutor`: the inference thread pool, with a bound on the jobs it holds.

Kept apart from `voice.engines` (which loads onnxruntime and the models) so the control plane's
context-propagating pool (`control.logs.ContextThreadPool`) can build on it cheaply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from voice.errors import ProviderError

__all__ = ["MAX_PENDING_JOBS", "BoundedExecutor", "InferenceBusy"]

P = ParamSpec("P")
T = TypeVar("T")

# Jobs queued or running at once. A call has at most a few in flight (an STT final or interim,
# a TTS sentence, a turn-model verdict), so this covers ~80 busy calls; beyond it the machine
# is seconds behind and a new job is better refused than served late.
MAX_PENDING_JOBS = 256


class InferenceBusy(ProviderError):
    """The inference queue is full; retryable (a later turn may find room)."""

    def __init__(self, pending: int) -> None:
        super().__init__("inference", f"{pending} jobs already queued", retryable=True)


class BoundedExecutor(ThreadPoolExecutor):
    """A thread pool that holds at most `max_pending` jobs, queued or running.

    Overflow policy: the new job fails fast. `submit` (so `loop.run_in_executor`) raises
    `InferenceBusy`, a retryable ProviderError, at once; what was queued runs undisturbed. The
    engine that asked degrades as for any provider failure: the turn model gives no verdict
    (the incomplete-turn timeout decides), the STT final or the TTS sentence fails over to the
    fallback provider or ends the call with a pipeline error. `refused` counts them."""

    def __init__(
        self, max_workers: int, *, max_pending: int = MAX_PENDING_JOBS, thread_name_prefix: str = ""
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.max_pending = max_pending
        self.refused = 0
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if self._pending >= self.max_pending:
                self.refused += 1
                raise InferenceBusy(self._pending)
            self._pending += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done()
            raise
        future.add_done_callback(lambda _future: self._done())  # also when cancelled
        return future

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
