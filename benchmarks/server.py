"""Run an AVA server (or a peer's bot) in its own process for a benchmark; read its CPU and RSS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from storage import upgrade

__all__ = ["ProcessUsage", "ServerProcess", "free_port", "process_usage", "run_server"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    cpu_seconds: float  # user + system
    rss_bytes: int


def process_usage(pid: int) -> ProcessUsage:
    """From /proc: this is Linux-only, as the benchmark machine is."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return ProcessUsage(cpu, rss)


@dataclass(slots=True)
class ServerProcess:
    base_url: str
    process: asyncio.subprocess.Process

    def usage(self) -> ProcessUsage:
        return process_usage(self.process.pid)


@contextlib.asynccontextmanager
async def run_server(
    env: Mapping[str, str] | None = None,
    *,
    log: Path | None = None,
    ready_timeout: float = 60,
    cpu: int | None = None,
    module: str = "control.cli",
) -> AsyncIterator[ServerProcess]:
    """`ava serve` on a free loopback port with `env` added; stopped with SIGTERM at the end.

    `cpu` pins the process to one core (`taskset`), so "calls per core" is measured, not
    inferred. `module` runs another server (a peer's bot) the same way: it must read
    AVA_HOST/AVA_PORT, serve `POST /twilio/voice` and answer `GET /readyz` with 200."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="ava-bench-"))
    database = f"sqlite+aiosqlite:///{data_dir}/ava.db"
    if "AVA_DATABASE_URL" not in (env or {}):
        await upgrade(database)  # a throwaway database, so runs never share state
    environment = {
        **os.environ,
        "AVA_DATA_DIR": str(data_dir),
        "AVA_DATABASE_URL": database,
        **(env or {}),
        "AVA_HOST": "127.0.0.1",
        "AVA_PORT": str(port),
    }
    output = log.open("wb") if log else subprocess.DEVNULL
    command = [sys.executable, "-m", module] + (["serve"] if module == "control.cli" else [])
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    process = await asyncio.create_subprocess_exec(
        *command, env=environment, stdout=output, stderr=output
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        async with httpx.AsyncClient() as http:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"server exited with {process.returncode} (log: {log})")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not ready after {ready_timeout}s (log: {log})")
                await asyncio.sleep(0.2)
        yield ServerProcess(base, process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        if not isinstance(output, int):
            output.close()
        shutil.rmtree(data_dir, ignore_errors=True)
