"""`ava bench capacity` bills the server's whole process tree: a child it starts counts, a
sibling (the provider fakes, the callers) does not."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from benchmarks.capacity import tree_pids, tree_usage

# Burns ~0.6 s of CPU in a grandchild, then idles until killed.
_BURN = (
    "import time\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.6: pass\n"
    "time.sleep(60)"
)
_PARENT = (
    "import subprocess, sys, time\n"
    f"child = subprocess.Popen([sys.executable, '-c', {_BURN!r}])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _spawn(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _stop(*processes: subprocess.Popen[str]) -> None:
    """Kill the processes and their descendants (ours only, by pid)."""
    for process in processes:
        for pid in reversed(tree_pids(process.pid)):
            if pid != process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_a_child_process_is_billed_and_a_sibling_is_not() -> None:
    parent = _spawn(_PARENT)
    sibling = _spawn(_BURN)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        before = tree_usage(parent.pid).cpu_seconds
        deadline = time.monotonic() + 30
        while tree_usage(parent.pid).cpu_seconds - before < 0.5:
            assert time.monotonic() < deadline, "the grandchild's CPU never showed up"
            time.sleep(0.05)
        pids = tree_pids(parent.pid)
        assert parent.pid in pids and child in pids
        assert sibling.pid not in pids and os.getpid() not in pids
        # the parent itself only sleeps: the time counted is the child's
        own = tree_usage(child).cpu_seconds
        assert tree_usage(parent.pid).cpu_seconds >= own >= 0.5
        assert tree_usage(parent.pid).rss_bytes > tree_usage(child).rss_bytes > 0
    finally:
        _stop(parent, sibling)


def test_an_exited_child_stays_billed_to_its_parent() -> None:
    code = (
        "import subprocess, sys, time\n"
        "subprocess.run([sys.executable, '-c', "
        "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass'])\n"
        "print('done', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = _spawn(code)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "done"
        assert tree_pids(parent.pid) == [parent.pid]  # the child is gone (and was waited for)
        assert tree_usage(parent.pid).cpu_seconds >= 0.4
    finally:
        _stop(parent)
