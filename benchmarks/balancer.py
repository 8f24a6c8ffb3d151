"""`ava bench capacity --nodes N`: N server processes behind the load balancer AVA ships.

The nodes are `ava serve` processes as in a deployment: one database and one Redis shared by all,
one `AVA_SECRET_KEY` (a stream token minted by one node verifies on another), each its own
`AVA_NODE_ID`. In front of them runs Debian's nginx with docker/nginx.conf, its upstreams
pointed at the nodes; the callers dial the balancer, never a node. The first node is the
benchmark stack's own server (`benchmarks.stack`); this module starts the others and nginx.

Cores: with a core for every node besides the helpers' core, node i gets its own; otherwise
every node shares the stack's server core (a two-core machine: the nodes on core 0, callers,
fakes and nginx on core 1), and calls per core is the total over that one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.server import ServerProcess, free_port, run_server
from benchmarks.stack import Stack
from storage import upgrade

__all__ = [
    "Balancer",
    "Cluster",
    "cluster_env",
    "nginx_conf",
    "node_cores",
    "node_env",
    "run_balancer",
    "run_nodes",
]

NGINX_CONF = Path(__file__).resolve().parents[1] / "docker" / "nginx.conf"
_SERVER_LINE = re.compile(r"^(\s*server\s+)[\w.-]+:\d+(.*)$", re.M)


def nginx_conf(upstreams: list[str], listen: str, prefix: Path, *, workers: int | None) -> str:
    """docker/nginx.conf with `upstreams` (each with the shipped options), listening on
    `listen`, its pid, logs and temp files under `prefix`; `workers`: worker processes (None:
    as shipped)."""
    conf = NGINX_CONF.read_text()
    lines = list(_SERVER_LINE.finditer(conf))
    if not lines:
        raise ValueError(f"{NGINX_CONF} has no upstream `server` lines")
    first = lines[0]  # the shipped lines are consecutive: one per node, N of them instead
    servers = "\n".join(f"{first.group(1)}{up}{first.group(2)}" for up in upstreams)
    conf = conf[: first.start()] + servers + conf[lines[-1].end() :]
    conf = conf.replace("listen 80;", f"listen {listen};")
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {prefix / 'nginx.pid'};")
    conf = conf.replace("access_log /dev/stdout ", f"access_log {prefix / 'access.log'} ")
    if workers is not None:
        conf = conf.replace("worker_processes auto;", f"worker_processes {workers};")
    # Debian's compiled-in temp paths are root's.
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return conf.replace("http {\n", "http {\n" + temp_paths, 1)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        raise RuntimeError("--nodes needs nginx (Debian: apt-get install nginx)")
    return found


@dataclass(frozen=True, slots=True)
class Balancer:
    base_url: str
    process: asyncio.subprocess.Process
    prefix: Path

    def media_streams_per_node(self) -> dict[str, int]:
        """Media websockets nginx upgraded, per upstream (from its access log)."""
        log = self.prefix / "access.log"
        text = log.read_text() if log.exists() else ""
        found = re.findall(r'"GET /twilio/media[^"]*" 101 .* upstream=(\S+)', text)
        return dict(Counter(found))


@contextlib.asynccontextmanager
async def run_balancer(
    upstreams: list[str], prefix: Path, *, cpu: int | None = None
) -> AsyncIterator[Balancer]:
    """nginx with docker/nginx.conf in front of `upstreams` on a free loopback port. Pinned to
    `cpu` it runs one worker (a second would only time-slice with it, and one worker's
    `least_conn` sees every connection)."""
    port = free_port()
    conf = prefix / "nginx.conf"
    text = nginx_conf(
        upstreams, f"127.0.0.1:{port}", prefix, workers=1 if cpu is not None else None
    )
    await asyncio.to_thread(_write, conf, text)
    command = [_nginx(), "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    log = (prefix / "error.log").open("wb")
    process = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as http:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"nginx exited: {(prefix / 'error.log').read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/lb-health")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("nginx did not answer /lb-health")
                await asyncio.sleep(0.05)
        yield Balancer(base, process, prefix)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGQUIT)  # graceful
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()


def node_cores(nodes: int, server: int | None, helpers: int | None) -> list[int | None]:
    """The core of each node: its own when the machine has one for each besides the helpers',
    else the stack's server core for all (None: not pinned)."""
    if server is None:
        return [None] * nodes
    spare = [c for c in sorted(os.sched_getaffinity(0)) if c not in (server, helpers)]
    if len(spare) >= nodes - 1:
        return [server, *spare[: nodes - 1]]
    return [server] * nodes


@contextlib.asynccontextmanager
async def cluster_env(redis_url: str) -> AsyncIterator[dict[str, str]]:
    """What every node shares: a migrated database (SQLite in WAL mode, in a scratch
    directory), Redis and the secret key."""
    scratch = Path(tempfile.mkdtemp(prefix="ava-bench-nodes-"))
    database = f"sqlite+aiosqlite:///{scratch}/ava.db"
    try:
        await upgrade(database)
        yield {
            "AVA_DATABASE_URL": database,
            "AVA_REDIS_URL": redis_url,
            "AVA_SECRET_KEY": secrets.token_urlsafe(32),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Cluster:
    servers: list[ServerProcess]
    cores: list[int | None]
    balancer: Balancer

    @property
    def base_url(self) -> str:
        return self.balancer.base_url


def node_env(stack: Stack, work_dir: Path, cpu: int | None) -> dict[str, str]:
    """What `benchmarks.stack.run_stack` gives its server (the fakes' URLs, the assistant),
    for the nodes it did not start."""
    env = {"AVA_MAX_CALLS": "2000", "AVA_LOG_LEVEL": "WARNING"}
    if cpu is not None:
        env["AVA_INFERENCE_THREADS"] = "1"
    if stack.providers is not None:
        env |= stack.providers.ava_env()
        env["AVA_ASSISTANT_FILE"] = str(work_dir / "assistant.json")
    return env


@contextlib.asynccontextmanager
async def run_nodes(
    stack: Stack, nodes: int, work_dir: Path, shared: Mapping[str, str], run_id: str
) -> AsyncIterator[Cluster]:
    """Nodes 2..`nodes` beside the stack's server (node 1, `{run_id}-1`, started with `shared`
    too), and nginx in front of all of them."""
    placement = node_cores(nodes, stack.cores.server, stack.cores.helpers)
    async with contextlib.AsyncExitStack() as exits:
        servers = [stack.server]
        for index in range(1, nodes):
            env = node_env(stack, work_dir, placement[index]) | dict(shared)
            env["AVA_NODE_ID"] = f"{run_id}-{index + 1}"
            log = work_dir / f"server-node{index + 1}.log"
            server = run_server(env, log=log, cpu=placement[index])
            servers.append(await exits.enter_async_context(server))
        upstreams = [s.base_url.removeprefix("http://") for s in servers]
        balancer = await exits.enter_async_context(
            run_balancer(upstreams, work_dir / "balancer", cpu=stack.cores.helpers)
        )
        yield Cluster(servers, placement, balancer)
