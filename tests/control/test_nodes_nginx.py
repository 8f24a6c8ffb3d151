"""Two AVA nodes behind Debian's nginx running docker/nginx.conf (issue 11): the balancer the
compose file ships, with its upstreams pointed at two apps in this process that share one
database and the machine's Redis.

A Twilio call placed through the balancer works: the voice webhook's signature verifies
(AVA rebuilds the URL Twilio signed from the Host and X-Forwarded-Proto nginx passes on, port
included), the TwiML points the media stream back at the balancer, and that websocket is
upgraded through nginx to a node. `GET /call/{id}` through the balancer, and on each node
directly, shows the same call with its turn.

With the call on one node, everything the API offers on a live call works through the other
node (connected to directly, so it is never the holder): every control type, each with its
effect on the call, and the listen URL (relayed over Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import websockets
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection

from benchmarks.fakes.server import serve as serve_fake
from benchmarks.fakes.twilio_rest import FakeCall, FakeTwilioRest, FakeTwilioRestConfig
from control.app import create_app
from control.listen import CLOSE_ENDED
from control.stores import Stores
from media.g711 import ulaw_silence
from media.twilio.caller import CallScript, parse_twiml, place_call
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature
from storage import TwilioCredentials
from tests.conftest import AssistantFactory, ScriptedEngines, migrated_sqlite, serve, settings_for
from tests.test_deployment_manifests import local_nginx_conf, nginx_binary
from voice.testing import tone_ulaw
from voice.types import ChatMessage

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(90)]

NUMBER = "+14155550177"
CALLER = "+15551230000"
ACCOUNT = "AC" + "f" * 32
AUTH_TOKEN = "balanced-auth-token"
SAMPLE: dict[str, Any] = json.loads(Path("control/data/sample-assistant.json").read_text())
SPEECH = tone_ulaw(0.8, frequency=300.0)
FRAME = 160  # 20 ms of μ-law
NOTE = "Tell the caller the store closes early today."
ANSWER = "Just so you know, we close early today."


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_nginx(
    upstreams: list[str], prefix: Path, *, single_worker: bool = False
) -> AsyncIterator[str]:
    """docker/nginx.conf in front of `upstreams`, on a free loopback port; yields its URL.
    `single_worker`: one worker process, so `least_conn` counts every connection (without a
    shared `zone`, each worker balances on its own counts)."""
    port = _free_port()
    conf = local_nginx_conf(upstreams, f"127.0.0.1:{port}", prefix)
    if single_worker:
        conf.write_text(conf.read_text().replace("worker_processes auto;", "worker_processes 1;"))
    log = (prefix / "error.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *[nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                assert process.returncode is None, (prefix / "error.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/lb-health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("nginx never answered")
        yield base
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()


async def _seed(stores: Stores) -> tuple[str, str]:
    """A tenant whose number the sample assistant answers; returns its id and API key."""
    tenant = await stores.tenants.create_tenant("Balanced")
    key = await stores.tenants.create_api_key(tenant.id)
    assistant = await stores.assistants.create(tenant.id, SAMPLE)
    await stores.phone_numbers.create(
        tenant.id,
        number=NUMBER,
        credentials=TwilioCredentials(ACCOUNT, auth_token=AUTH_TOKEN),
        assistant_id=assistant.id,
    )
    return tenant.id, key.plaintext


async def _until(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    assert predicate()


async def _polled(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10.0) -> None:
    """`check` reads another party's state over the network (a node's API): poll it."""
    for _ in range(round(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@dataclass
class Node:
    node_id: str
    app: FastAPI
    engines: ScriptedEngines
    base: str = ""

    @property
    def live(self) -> dict[str, Any]:
        live: dict[str, Any] = self.app.state.ava.calls.live
        return live


@dataclass
class Cluster:
    """Two nodes on one database and the machine's Redis, nginx in front, a fake Twilio REST."""

    nodes: list[Node]
    lb: str
    tenant_id: str
    key: str
    twilio: FakeTwilioRest

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def node(self, node_id: str) -> Node:
        [node] = [n for n in self.nodes if n.node_id == node_id]
        return node

    def other(self, node: Node) -> Node:
        [other] = [n for n in self.nodes if n is not node]
        return other

    async def located(self, call_sid: str) -> tuple[str, Node]:
        """The call Twilio knows as `call_sid` and the node holding it, as the call record
        says (its `node_id`, written when the media stream starts)."""
        stores: Stores = self.nodes[0].app.state.ava.stores
        for _ in range(400):
            record = await stores.calls.find_by_twilio_sid(self.tenant_id, call_sid)
            if record is not None and record.status == "in-progress" and record.node_id:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"call {call_sid} never went live on a node")
        node, call_id = self.node(record.node_id), record.id
        await _until(lambda: call_id in node.live, 10)
        return call_id, node


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path,
    assistant_file: AssistantFactory,
    redis_url: str,
    *,
    heard: list[str],
    replies: list[str],
    drain_seconds: float = 5.0,
    single_worker: bool = False,
    **settings: Any,
) -> AsyncIterator[Cluster]:
    """Nodes a and b (each with ScriptedEngines(heard, replies), ToneTts at 10 ms a character)
    behind docker/nginx.conf, the tenant of `_seed`, and the fake Twilio REST its number's
    account is on."""
    database = migrated_sqlite(tmp_path / "db")
    run = uuid.uuid4().hex[:8]
    twilio = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    async with contextlib.AsyncExitStack() as stack:
        twilio_base = await stack.enter_async_context(serve_fake(twilio.app))

        def node(name: str) -> Node:
            config = settings_for(
                assistant_file(),
                tmp_path / name,
                database_url=database,
                redis_url=redis_url,
                node_id=f"{name}-{run}",
                twilio_auth_token="operator-token",  # not dev mode: signatures are checked
                twilio_api_base_url=twilio_base,
                control_timeout_seconds=5,  # a loaded test machine is not a dead node
                **settings,
            )
            engines = ScriptedEngines(list(heard), list(replies), seconds_per_char=0.01)
            return Node(config.node_id or "", create_app(config, engines=engines), engines)

        nodes = [node("a"), node("b")]
        for each in nodes:
            each.base = await stack.enter_async_context(serve(each.app, drain_seconds))
        tenant_id, key = await _seed(nodes[0].app.state.ava.stores)
        upstreams = [n.base.removeprefix("http://") for n in nodes]
        lb = await stack.enter_async_context(
            running_nginx(upstreams, tmp_path, single_worker=single_worker)
        )
        yield Cluster(nodes, lb, tenant_id, key, twilio)
        await _until(lambda: all(not n.live for n in nodes))


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
async def twilio_leg(c: Cluster, *, first_hop: str | None = None) -> AsyncIterator[Leg]:
    """A call to NUMBER: its webhook is the balancer's URL (delivered to `first_hop` when
    given: the balancer chose that node); the media stream goes where the TwiML says. The fake
    Twilio REST knows the call, as Twilio would (a transfer updates it)."""
    sid = "CA" + uuid.uuid4().hex
    c.twilio.calls[sid] = FakeCall(
        sid, ACCOUNT, NUMBER, CALLER, None, None, None, [], status="in-progress"
    )
    form = {
        "AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "CallSid": sid,
        "CallStatus": "ringing", "Called": NUMBER, "Caller": CALLER,
        "Direction": "inbound", "From": CALLER, "To": NUMBER,
    }  # fmt: skip
    webhook = f"{c.lb}/twilio/voice"
    async with httpx.AsyncClient(timeout=10) as http:
        target = f"{first_hop}/twilio/voice" if first_hop else webhook
        answers = await twilio_answers(http, webhook, form, target)
    stream = parse_twiml(answers[-1])
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, stream.url, {})}
    line = PhoneLine(call_sid=sid, account_sid=ACCOUNT, custom_parameters=stream.parameters)
    async with websockets.connect(stream.url, additional_headers=headers) as ws:
        leg = Leg(sid, answers, line, ws)
        loop = asyncio.get_running_loop()
        await ws.send(line.connected(loop.time()))
        await ws.send(line.start(loop.time()))
        tasks = [asyncio.create_task(leg.talk()), asyncio.create_task(leg.hear())]
        try:
            yield leg
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:  # an assertion that failed in the phone surfaces here
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_a_call_through_nginx_lands_on_a_node_and_is_read_through_it(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> None:
    async with cluster(
        tmp_path, assistant_file, redis_url,
        heard=["What are your hours?"], replies=["We open at nine."],
    ) as c:  # fmt: skip
        report = await place_call(
            c.lb,
            CallScript([SPEECH], max_seconds=30),
            auth_token=AUTH_TOKEN,
            to_number=NUMBER,
            fetch_record=False,
        )
        assert report.error is None, report.error
        assert report.ok and len(report.turns) == 1

        async with httpx.AsyncClient(base_url=c.lb, headers=c.auth) as http:
            calls = (await http.get("/call")).json()
            assert [call["phoneCallProviderId"] for call in calls] == [report.call_sid]
            call_id = calls[0]["id"]

            async def ended() -> dict[str, Any]:
                for _ in range(200):
                    call: dict[str, Any] = (await http.get(f"/call/{call_id}")).json()
                    if call["status"] == "ended" and call.get("messages"):
                        return call
                    await asyncio.sleep(0.05)
                raise AssertionError(f"call {call_id} never ended: {call}")

            call = await ended()
        said = [(m["role"], m["message"]) for m in call["messages"] if m["role"] != "system"]
        assert ("user", "What are your hours?") in said
        assert ("bot", "We open at nine.") in said
        # The same record through either node directly: both read the shared database.
        for node in c.nodes:
            async with httpx.AsyncClient(base_url=node.base, headers=c.auth) as http:
                direct = (await http.get(f"/call/{call_id}")).json()
            assert direct["id"] == call_id and direct["status"] == "ended"
        # One node held the call's session.
        held = [n for n in c.nodes if call_id in n.app.state.ava.calls.records]
        assert len(held) == 1
        upstreams = [n.base.removeprefix("http://") for n in c.nodes]
    # nginx's log says which node served what: the webhook and the media websocket each went to
    # a node (the websocket upgraded through the balancer, to the node holding the call), and
    # the API reads were spread over both.
    served = _served(tmp_path / "access.log")
    [webhook] = [upstream for request, status, upstream in served if "/twilio/voice" in request]
    [media] = [
        (status, upstream) for request, status, upstream in served if "/twilio/media" in request
    ]
    assert webhook in upstreams and media == ("101", held[0].base.removeprefix("http://"))
    reads = {upstream for request, status, upstream in served if request.startswith("GET /call")}
    assert reads == set(upstreams)


def _ws(base: str, call_id: str) -> str:
    return base.replace("http://", "ws://", 1) + f"/call/{call_id}/listen"


def _loud(pcm: bytes, channel: int, channels: int = 2) -> bool:
    whole = len(pcm) - len(pcm) % (2 * channels)
    samples = np.frombuffer(pcm[:whole], "<i2")[channel::channels]
    return len(samples) > 0 and int(np.abs(samples.astype(np.int32)).max()) > 1000


async def _heard(listener: ClientConnection, into: bytearray) -> None:
    async for frame in listener:  # until the node closes it
        assert isinstance(frame, bytes)
        into += frame


async def test_every_control_and_the_listen_url_work_through_the_other_node(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> None:
    async with cluster(tmp_path, assistant_file, redis_url, heard=[], replies=[ANSWER]) as c:
        async with twilio_leg(c) as leg, twilio_leg(c) as forwarded:
            # --- transfer, on one call: through the node not holding it ----------------------
            forwarded_id, holder = await c.located(forwarded.call_sid)
            async with httpx.AsyncClient(base_url=c.other(holder).base, headers=c.auth) as http:
                destination = {"type": "number", "number": "+15551112222"}
                sent = await http.post(
                    f"/call/{forwarded_id}/control",
                    json={"type": "transfer", "destination": destination},
                )
                assert sent.status_code == 200, sent.text
                assert sent.json()["status"] == "sent"
                updates = c.twilio.calls[forwarded.call_sid].updates
                await _until(lambda: bool(updates), 10)  # the holder told Twilio to dial
                assert "+15551112222</Dial>" in updates[0]["Twiml"]

                async def forwarded_ended() -> bool:
                    call = (await http.get(f"/call/{forwarded_id}")).json()
                    return bool(call.get("endedReason") == "assistant-forwarded-call")

                await _polled(forwarded_ended, "the transferred call ended as forwarded")

            # --- everything else, on the other call -------------------------------------------
            call_id, holder = await c.located(leg.call_sid)
            other = c.other(holder)
            async with httpx.AsyncClient(base_url=other.base, headers=c.auth) as http:

                async def control(body: dict[str, Any]) -> dict[str, Any]:
                    response = await http.post(f"/call/{call_id}/control", json=body)
                    assert response.status_code == 200, (body, response.text)
                    out: dict[str, Any] = response.json()
                    return out

                async def bot_said(text: str) -> bool:
                    call = (await http.get(f"/call/{call_id}")).json()
                    return any(
                        m["role"] == "bot" and m["message"] == text for m in call["messages"]
                    )

                shown = (await http.get(f"/call/{call_id}")).json()
                assert shown["status"] == "in-progress"
                url = shown["monitor"]["listenUrl"]
                assert url == _ws(other.base, call_id)  # the node asked, which is not the holder
                async with websockets.connect(url, additional_headers=c.auth) as listener:
                    start = json.loads(await asyncio.wait_for(listener.recv(), 10))
                    assert start == {
                        "type": "start", "callId": call_id, "sampleRate": 8000, "channels": 2,
                        "encoding": "pcm_s16le", "layout": ["customer", "assistant"],
                    }  # fmt: skip
                    pcm = bytearray()
                    listening = asyncio.create_task(_heard(listener, pcm))
                    # the greeting has played
                    await _until(lambda: leg.line.media_received > 0 and leg.all_played(), 10)

                    # say: the caller hears it, the listener too, and it is on the record
                    before, heard_before = leg.line.media_received, len(pcm) - len(pcm) % 4
                    said = await control({"type": "say", "content": "Your order has shipped."})
                    assert said["status"] == "sent" and said["type"] == "say"
                    await _until(lambda: leg.line.media_received > before, 10)
                    await _until(lambda: _loud(bytes(pcm[heard_before:]), channel=1), 10)
                    await _polled(lambda: bot_said("Your order has shipped."), "say recorded")

                    # mute: a say is played (its marks come back) but none of its audio is sent
                    await control({"type": "mute-assistant"})
                    await _until(leg.all_played, 10)
                    before, marks = leg.line.media_received, leg.line.marks_received
                    await control({"type": "say", "content": "Nobody hears this."})
                    await _until(lambda: leg.line.marks_received > marks and leg.all_played(), 10)
                    assert leg.line.media_received == before
                    await control({"type": "unmute-assistant"})
                    await control({"type": "say", "content": "Back again."})
                    await _until(lambda: leg.line.media_received > before, 10)

                    # add-message: into the holder's model context, answered at once
                    note = {"role": "system", "content": NOTE}
                    await control({"type": "add-message", "message": note})
                    await _until(lambda: bool(holder.engines.llm.requests), 10)
                    assert holder.engines.llm.requests[-1][-1] == ChatMessage("system", NOTE)
                    assert other.engines.llm.requests == []
                    await _polled(lambda: bot_said(ANSWER), "the answer to add-message recorded")

                    # end-call: the holder's session hangs up, Twilio's leg too, and the
                    # listener on this node is closed normally
                    ended = await control({"type": "end-call"})
                    assert ended["status"] == "ended"
                    assert ended["endedReason"] == "manually-canceled"
                    await asyncio.wait_for(leg.closed.wait(), 10)
                    await asyncio.wait_for(listening, 10)
                    assert listener.close_code == CLOSE_ENDED
                    assert c.twilio.calls[leg.call_sid].status == "completed"

                final: dict[str, Any] = (await http.get(f"/call/{call_id}")).json()
            spoken = {m["message"] for m in final["messages"] if m["role"] == "bot"}
            assert {"Your order has shipped.", "Back again.", ANSWER} <= spoken
            assert final["status"] == "ended" and final["endedReason"] == "manually-canceled"


def _served(access_log: Path) -> list[tuple[str, str, str]]:
    """(request line, status, upstream) for each line of docker/nginx.conf's `ava` log format."""
    line = re.compile(r'"([^"]*)" (\d{3}) .* upstream=(\S+)')
    matches = [line.search(text) for text in access_log.read_text().splitlines()]
    return [(m.group(1), m.group(2), m.group(3)) for m in matches if m]
