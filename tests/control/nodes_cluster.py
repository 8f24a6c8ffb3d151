"""Two real `ava serve` processes as one service behind Debian's nginx (issue 11), as deployed.

Each node is `ava serve` in its own OS process (`benchmarks.server.run_server`), with one fresh
PostgreSQL database per cluster, the machine's Redis, one AVA_SECRET_KEY and its own
AVA_NODE_ID. nginx runs docker/nginx.conf with its upstreams pointed at the nodes. The nodes
check Twilio signatures (not dev mode), use the operator's provider keys for the tenant, and may
reach the test's webhook receiver on 127.0.0.1 (AVA_EGRESS_ALLOW).

The providers are the wire-faithful fakes of benchmarks/fakes, served by the test process: one
Deepgram (it hears the caller's words from the top of `HEARD` on every call), an OpenAI per node
(its chat model and its voice: which node asked the model what is read at that node's fake) and
Twilio's REST API. The caller speaks Piper-synthesized `HEARD` (the nodes' Silero VAD must hear
speech, not a tone).

Isolation between xdist workers: each cluster has its own database, ports, node ids, tenant and
calls, so none of its Redis keys (node registry, control and listen channels, held assistants,
rate buckets) is another cluster's; AVA has no Redis key prefix setting, the ids are the prefix.

`Clusters` shares one cluster between the tests of a module (a module-scoped fixture holds it):
starting a node costs ~5 s of CPU (importing the app, loading the offline models every node
loads), ~20-45 s of wall time on a loaded 2-core machine. A node a test stopped (SIGTERM,
SIGKILL) is replaced by a new process before the next test asks for the cluster, and nginx is
reloaded with its address (`Cluster.heal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import signal
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig, Reply
from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeCall, FakeTwilioRest, FakeTwilioRestConfig
from benchmarks.providers import spoken_seconds
from benchmarks.server import ServerProcess, free_port, run_server
from control.settings import Settings
from control.stores import Stores, open_stores
from media.g711 import ulaw_silence
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature
from storage import TwilioCredentials, upgrade
from tests.conftest import reachable_redis
from tests.control.twilio_phone import open_twiml_stream
from tests.storage.conftest import postgres_database
from tests.test_deployment_manifests import local_nginx_conf, nginx_binary
from voice.engines.synthesize import synthesize_ulaw

__all__ = [
    "ACCOUNT",
    "ANSWER",
    "API_KEY",
    "ASSISTANT",
    "AUTH_TOKEN",
    "CALLER",
    "CONTROL_TIMEOUT",
    "GREETING",
    "HEARD",
    "HEARTBEAT",
    "NOTE",
    "NUMBER",
    "REPLIES",
    "TTL",
    "Balancer",
    "Cluster",
    "Clusters",
    "Leg",
    "Node",
    "caller_speech",
    "polled",
    "redis_url_or_skip",
    "running_cluster",
    "running_nginx",
    "served",
    "twilio_answers",
    "twilio_leg",
    "until",
]

SECRET = "cluster-test-secret"
NUMBER = "+14155550177"
CALLER = "+15551230000"
ACCOUNT = "AC" + "f" * 32
AUTH_TOKEN = "balanced-auth-token"
API_KEY = "cluster-provider-key"
GREETING = "Hello, this is Ava. How can I help you today?"
HEARD = ["What are your hours?", "Where are you?"]
REPLIES = ["We open at nine.", "On Main Street."]
NOTE = "Tell the caller the store closes early today."
ANSWER = "Just so you know, we close early today."
# Generous for a loaded machine (4 test workers on 2 cores): a late beat is not a dead node.
HEARTBEAT, TTL = 1.0, 5.0
CONTROL_TIMEOUT = 0.8  # AVA_CONTROL_TIMEOUT_SECONDS (the default)
FRAME = 160  # 20 ms of μ-law
ASSISTANT: dict[str, Any] = {
    "name": "Balanced",
    "firstMessage": GREETING,
    "firstMessageMode": "assistant-speaks-first",
    "model": {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are Ava, a receptionist."}],
    },
    "voice": {"provider": "openai", "voiceId": "alloy"},
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
    # Callers stay quiet while nodes are stopped around their calls: never ended for silence.
    "silenceTimeoutSeconds": 600,
    "maxDurationSeconds": 600,
}


def _reply(messages: list[dict[str, Any]]) -> Reply:
    """The model: `REPLIES` to `HEARD`, `ANSWER` to a system message saying `NOTE`."""
    last = messages[-1] if messages else {}
    if last.get("role") == "system" and last.get("content") == NOTE:
        return ANSWER
    user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return dict(zip(HEARD, REPLIES, strict=True)).get(str(user.get("content")), "Sorry?")


@functools.cache
def caller_speech() -> tuple[bytes, ...]:
    """`HEARD` as μ-law speech, synthesized once per test process."""
    return tuple(synthesize_ulaw(list(HEARD)))


async def until(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    """`predicate` reads this process's state (a fake's records, the phone): poll it."""
    for _ in range(round(seconds / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    assert predicate()


async def polled(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10.0) -> None:
    """`check` reads another process's state over the network (a node's API): poll it."""
    for _ in range(round(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def redis_url_or_skip() -> str:
    """The machine's Redis, as tests/conftest.py's `redis_url` (for module-scoped fixtures)."""
    return await reachable_redis()


def _nginx_conf(upstreams: list[str], listen: str, prefix: Path, single_worker: bool) -> Path:
    conf = local_nginx_conf(upstreams, listen, prefix)
    if single_worker:
        conf.write_text(conf.read_text().replace("worker_processes auto;", "worker_processes 1;"))
    return conf


@dataclass
class Balancer:
    """nginx running docker/nginx.conf, its master process and its configuration."""

    url: str
    process: asyncio.subprocess.Process
    listen: str
    prefix: Path
    single_worker: bool

    async def reload(self, upstreams: list[str], new: set[str]) -> None:
        """New upstreams, as an operator reloads nginx (SIGHUP): returns once requests went
        through it to each of `new`."""
        mark = (self.prefix / "access.log").stat().st_size
        _nginx_conf(upstreams, self.listen, self.prefix, self.single_worker)
        self.process.send_signal(signal.SIGHUP)
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(f"{self.url}/readyz")
                if new <= {u for *_, u in served(self.prefix / "access.log", mark)}:
                    return
                await asyncio.sleep(0.05)
        raise AssertionError(f"nginx never sent a request to {new} after reloading")


@contextlib.asynccontextmanager
async def running_nginx(
    upstreams: list[str], prefix: Path, *, single_worker: bool = False
) -> AsyncIterator[Balancer]:
    """docker/nginx.conf in front of `upstreams`, on a free loopback port.
    `single_worker`: one worker process, so `least_conn` counts every connection (without a
    shared `zone`, each worker balances on its own counts)."""
    listen = f"127.0.0.1:{free_port()}"
    log = (prefix / "error.log").open("wb")
    conf = _nginx_conf(upstreams, listen, prefix, single_worker)
    process = await asyncio.create_subprocess_exec(
        *[nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stdout=log,
        stderr=log,
    )
    balancer = Balancer(f"http://{listen}", process, listen, prefix, single_worker)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                assert process.returncode is None, (prefix / "error.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{balancer.url}/lb-health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("nginx never answered")
        yield balancer
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()


@dataclass
class Node:
    """One `ava serve` process and the fake OpenAI only it talks to."""

    name: str
    node_id: str
    server: ServerProcess
    llm: OpenAiFake
    log: Path

    @property
    def base(self) -> str:
        return self.server.base_url

    @property
    def upstream(self) -> str:
        return self.base.removeprefix("http://")

    @property
    def alive(self) -> bool:
        return self.server.process.returncode is None

    def asked(self, content: str) -> bool:
        """Whether this node's model got a request ending with the system message `content`."""
        return any(
            r["messages"][-1] == {"role": "system", "content": content}
            for r in self.llm.chat_requests
            if r.get("messages")
        )


@dataclass
class Cluster:
    """The nodes, nginx in front (`lb`), the seeded tenant, the fakes, and the test's own
    connection to the shared database (to see which node holds a call)."""

    nodes: list[Node]
    tenant_id: str
    key: str
    twilio: FakeTwilioRest
    deepgram: DeepgramFake
    stores: Stores
    directory: Path  # nginx's prefix: access.log, error.log
    redis_url: str
    balancer: Balancer
    start_node: Callable[[str], Awaitable[Node]]
    restarts: int = 0

    @property
    def lb(self) -> str:
        return self.balancer.url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def alive(self) -> bool:
        return all(n.alive for n in self.nodes)

    def node(self, node_id: str) -> Node:
        [node] = [n for n in self.nodes if n.node_id == node_id]
        return node

    async def heal(self) -> None:
        """Each node a test stopped is replaced by a new process (a new node id, as a restarted
        pod gets), and nginx reloaded with their addresses: a rolling restart's second half."""
        dead = [index for index, node in enumerate(self.nodes) if not node.alive]
        if not dead:
            return
        names = [f"{self.nodes[i].name[0]}{self.restarts + k + 2}" for k, i in enumerate(dead)]
        self.restarts += len(dead)
        started = await asyncio.gather(*(self.start_node(name) for name in names))
        for index, node in zip(dead, started, strict=True):
            self.nodes[index] = node
        await self.balancer.reload([n.upstream for n in self.nodes], {n.upstream for n in started})

    def other(self, node: Node) -> Node:
        [other] = [n for n in self.nodes if n is not node]
        return other

    def access_log_size(self) -> int:
        path = self.directory / "access.log"
        return path.stat().st_size if path.exists() else 0

    def served(self, since: int = 0) -> list[tuple[str, str, str]]:
        """nginx's access log from byte `since` on (see `served`)."""
        return served(self.directory / "access.log", since)

    async def located(self, call_sid: str) -> tuple[str, Node]:
        """The call Twilio knows as `call_sid` and the node holding it, as the call record
        says (its `node_id`, written when the media stream starts)."""
        for _ in range(400):
            record = await self.stores.calls.find_by_twilio_sid(self.tenant_id, call_sid)
            if record is not None and record.status == "in-progress" and record.node_id:
                return record.id, self.node(record.node_id)
            await asyncio.sleep(0.05)
        raise AssertionError(f"call {call_sid} never went live on a node")


def served(access_log: Path, since: int = 0) -> list[tuple[str, str, str]]:
    """(request line, status, upstream) for each line of docker/nginx.conf's `ava` log format."""
    line = re.compile(r'"([^"]*)" (\d{3}) .* upstream=(\S+)')
    with access_log.open("rb") as log:
        log.seek(since)
        text = log.read().decode()
    matches = [line.search(each) for each in text.splitlines()]
    return [(m.group(1), m.group(2), m.group(3)) for m in matches if m]


async def _seed(stores: Stores) -> tuple[str, str]:
    """A tenant whose number `ASSISTANT` answers; returns its id and API key."""
    tenant = await stores.tenants.create_tenant("Balanced")
    key = await stores.tenants.create_api_key(tenant.id)
    assistant = await stores.assistants.create(tenant.id, ASSISTANT)
    await stores.phone_numbers.create(
        tenant.id,
        number=NUMBER,
        credentials=TwilioCredentials(ACCOUNT, auth_token=AUTH_TOKEN),
        assistant_id=assistant.id,
    )
    return tenant.id, key.plaintext


@contextlib.asynccontextmanager
async def running_cluster(
    directory: Path,
    redis_url: str,
    *,
    drain_seconds: float = 5.0,
    single_worker: bool = False,
) -> AsyncIterator[Cluster]:
    """Nodes a and b behind docker/nginx.conf (its prefix is `directory`), the tenant of
    `_seed` and the fakes. Leaving it stops nginx, then each live node with SIGTERM."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    speech = asyncio.create_task(asyncio.to_thread(caller_speech))  # beside the node starts
    run = uuid.uuid4().hex[:8]
    twilio = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    deepgram = DeepgramFake(
        DeepgramFakeConfig(
            api_key=API_KEY,
            script=list(HEARD),
            script_per_connection=True,
            utterance_gap=0.5,
            idle_timeout=600.0,
        )
    )
    with postgres_database() as database:
        await upgrade(database)
        settings = Settings(
            database_url=database, secret_key=SECRET,  # type: ignore[arg-type]
            _env_file=None,  # type: ignore[call-arg]
        )  # fmt: skip
        stores = await open_stores(settings)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(stores.close)
            tenant_id, key = await _seed(stores)
            twilio_base = await stack.enter_async_context(serve(twilio.app))
            deepgram_base = await stack.enter_async_context(serve(deepgram.app))
            assistant_file = directory / "assistant.json"
            assistant_file.write_text(json.dumps(ASSISTANT))

            def env(node_id: str, llm_base: str) -> dict[str, str]:
                return {
                    "AVA_DATABASE_URL": database,
                    "AVA_SECRET_KEY": SECRET,
                    "AVA_REDIS_URL": redis_url,
                    "AVA_NODE_ID": node_id,
                    "AVA_NODE_HEARTBEAT_SECONDS": str(HEARTBEAT),
                    "AVA_NODE_TTL_SECONDS": str(TTL),
                    "AVA_CONTROL_TIMEOUT_SECONDS": str(CONTROL_TIMEOUT),
                    "AVA_DRAIN_SECONDS": str(drain_seconds),
                    "AVA_TWILIO_AUTH_TOKEN": "operator-token",  # not dev mode: signatures hold
                    "AVA_TWILIO_API_BASE_URL": twilio_base,
                    "AVA_TENANTS_USE_OPERATOR_KEYS": "true",
                    "AVA_EGRESS_ALLOW": "127.0.0.1",  # the test's webhook receiver
                    # Startup warms the assistant file's greeting: on the fakes, not Piper.
                    "AVA_ASSISTANT_FILE": str(assistant_file),
                    # Every test utterance ends in finished words: the turn model is not asked.
                    "AVA_TURN_MODEL": "false",
                    "AVA_INFERENCE_THREADS": "1",
                    "DEEPGRAM_API_KEY": API_KEY,
                    "DEEPGRAM_BASE_URL": deepgram_base.replace("http://", "ws://", 1),
                    "OPENAI_API_KEY": API_KEY,
                    "OPENAI_BASE_URL": f"{llm_base}/v1",
                }

            async def start_node(name: str) -> Node:
                llm = OpenAiFake(
                    OpenAiFakeConfig(
                        api_key=API_KEY,
                        reply=_reply,
                        first_token_latency=0.05,
                        tokens_per_second=100.0,
                        speech_first_byte_latency=0.05,
                        speech_seconds_per_char=0.03,
                    )
                )
                llm_base = await stack.enter_async_context(serve(llm.app))
                log = directory / f"{name}.log"
                node_id = f"{name}-{run}"
                server = run_server(env(node_id, llm_base), log=log, ready_timeout=120)
                return Node(name, node_id, await stack.enter_async_context(server), llm, log)

            # Their imports and model loading overlap.
            nodes = list(await asyncio.gather(start_node("a"), start_node("b")))
            balancer = await stack.enter_async_context(
                running_nginx([n.upstream for n in nodes], directory, single_worker=single_worker)
            )
            clips = await speech
            deepgram.config.script_seconds = [spoken_seconds(clip) for clip in clips]
            yield Cluster(
                nodes, tenant_id, key, twilio, deepgram, stores, directory, redis_url, balancer,
                start_node,
            )  # fmt: skip


class Clusters:
    """One cluster for the tests of a module, started on first use. A node a test stopped is
    replaced before the next test (`Cluster.heal`)."""

    def __init__(self, directory: Path, **options: Any) -> None:
        self._directory = directory
        self._options = options
        self._stack = contextlib.AsyncExitStack()
        self._cluster: Cluster | None = None

    async def get(self) -> Cluster:
        if self._cluster is not None:
            await self._cluster.heal()
            return self._cluster
        redis_url = await redis_url_or_skip()
        self._cluster = await self._stack.enter_async_context(
            running_cluster(self._directory, redis_url, **self._options)
        )
        return self._cluster

    async def aclose(self) -> None:
        self._cluster = None
        await self._stack.aclose()


@dataclass
class Leg:
    """One inbound call as Twilio carries it: the media stream of the TwiML it was given
    (`answers`: each webhook answer, redirects included). The phone sends silence, or what
    `say` queued, every 20 ms, plays what it is sent in real time and echoes marks."""

    call_sid: str
    answers: list[str]
    line: PhoneLine
    ws: ClientConnection
    speech: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def say(self, audio: bytes) -> None:
        self.speech += audio

    def all_played(self) -> bool:
        line = self.line
        return line.marks_echoed == line.marks_received and line.next_due() is None

    async def talk(self) -> None:
        loop = asyncio.get_running_loop()
        start, frames = loop.time(), 0
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                now = loop.time()
                for message in self.line.due_messages(now):
                    await self.ws.send(message)
                frame = bytes(self.speech[:FRAME])
                del self.speech[:FRAME]
                await self.ws.send(self.line.media(frame + ulaw_silence(FRAME - len(frame)), now))
                frames += 1
                # Absolute schedule: a late wake-up is caught up, never accumulated.
                await asyncio.sleep(max(0.0, start + frames * 0.02 - loop.time()))

    async def hear(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                assert isinstance(text, str)
                self.line.receive_text(text, loop.time())
        self.closed.set()


async def twilio_answers(
    http: httpx.AsyncClient, url: str, form: dict[str, str], target: str
) -> list[str]:
    """Twilio asking for a call's TwiML: the webhook `url` (delivered to `target`), signed with
    the number's token, then each `<Redirect>` it is given (a draining node's), as Twilio does."""
    answers: list[str] = []
    for _ in range(4):
        headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
        if target != url:  # to a node directly: with the headers the balancer would have set
            signed = urlsplit(url)
            headers |= {"Host": signed.netloc, "X-Forwarded-Proto": signed.scheme}
        answer = await http.post(target, data=form, headers=headers)
        assert answer.status_code == 200, answer.text
        answers.append(answer.text)
        redirect = ElementTree.fromstring(answer.text).find("Redirect")
        if redirect is None:
            return answers
        assert redirect.get("method") == "POST"
        url = target = redirect.text or ""
    raise AssertionError(f"redirected over and over: {answers}")


@contextlib.asynccontextmanager
async def twilio_leg(
    c: Cluster,
    *,
    number: str = NUMBER,
    public: str | None = None,
    first_hop: str | None = None,
) -> AsyncIterator[Leg]:
    """A call to `number` whose webhook Twilio has as `public` (default: the balancer's URL),
    delivered to `first_hop` when given (the balancer chose that node); the media stream goes
    where the TwiML says. The fake Twilio REST knows the call, as Twilio would (a transfer
    updates it)."""
    sid = "CA" + uuid.uuid4().hex
    c.twilio.calls[sid] = FakeCall(
        sid, ACCOUNT, number, CALLER, None, None, None, [], status="in-progress"
    )
    form = {
        "AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "CallSid": sid,
        "CallStatus": "ringing", "Called": number, "Caller": CALLER,
        "Direction": "inbound", "From": CALLER, "To": number,
    }  # fmt: skip
    webhook = f"{public or c.lb}/twilio/voice"
    async with httpx.AsyncClient(timeout=10) as http:
        target = f"{first_hop}/twilio/voice" if first_hop else webhook
        answers = await twilio_answers(http, webhook, form, target)
    stream = open_twiml_stream(answers[-1], sid, token=AUTH_TOKEN, account_sid=ACCOUNT)
    async with stream as (ws, line):
        leg = Leg(sid, answers, line, ws)
        tasks = [asyncio.create_task(leg.talk()), asyncio.create_task(leg.hear())]
        try:
            yield leg
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:  # an assertion that failed in the phone surfaces here
                with contextlib.suppress(asyncio.CancelledError):
                    await task
