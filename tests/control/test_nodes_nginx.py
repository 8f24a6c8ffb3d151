"""Two real `ava serve` processes as one service behind Debian's nginx running docker/nginx.conf
(issue 11): separate OS processes on one PostgreSQL database and the machine's Redis, the
providers the wire-faithful fakes of benchmarks/fakes (tests/control/nodes_cluster.py). One
cluster serves the module's tests; nginx runs one worker, so `least_conn` counts every
connection. A node a test stops is replaced by a new process before the next test, and nginx is
reloaded with its address.

A Twilio call placed through the balancer works: the voice webhook's signature verifies (AVA
rebuilds the URL Twilio signed from the Host and X-Forwarded-Proto nginx passes on, port
included; an X-Forwarded-Host the client forges is replaced by nginx, so a signature for another
host is refused), the TwiML points the media stream back at the balancer, and that websocket is
upgraded through nginx to a node. `GET /call/{id}` through the balancer, and on each node
directly, shows the same call with its turn.

With the call on one node, everything the API offers on a live call works through the other
node (connected to directly, so it is never the holder): every control type, each with its
effect on the call (the `add-message` reaches the holder's model, seen at its fake OpenAI), and
the listen URL (relayed over Redis).

Any node may take any leg: a transient assistant from `assistant-request`, answered on node A,
runs the call whose media stream lands on node B (it is handed over sealed in Redis, and taken).

A rolling restart: first A's replacement starts (a new process and node id, as a rolling restart
starts the new pod before stopping the old) while A holds a live call, and leaves that call alone
past TTL + heartbeat. Then A gets a real SIGTERM. Its call goes on: the turn in flight when the
signal came completes, the caller asks again and is answered, and nothing completed is lost (every
turn's messages are on the record); the caller hangs up and the process exits at once instead of
waiting out its drain. Meanwhile A's `/readyz` says 503, and a new Twilio call the balancer sends to
A gets a `<Redirect>` to the service's URL, which nginx sends to node B, which serves that call.
Then B is SIGKILLed with that call and another (one test, so the cluster's two processes serve both
stops): a command for the first gets the clear 504 within the control deadline, and `end-call` still
ends it and hangs Twilio's leg up from A; the second, which nobody ends, a survivor closes once B's
heartbeat has expired (within TTL + heartbeat), with the reason that says so, and hangs it up at
Twilio.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from benchmarks.fakes.twilio_rest import RecordedRequest
from control.listen import CLOSE_ENDED
from media.twilio.caller import CallScript, place_call
from media.twilio.signature import compute_signature
from storage.orphans import NODE_DIED_REASON
from tests.control.nodes_cluster import (
    ACCOUNT,
    ANSWER,
    AUTH_TOKEN,
    CALLER,
    CONTROL_TIMEOUT,
    GREETING,
    HEARD,
    HEARTBEAT,
    NOTE,
    NUMBER,
    REPLIES,
    TTL,
    Cluster,
    Clusters,
    Leg,
    Node,
    caller_speech,
    polled,
    twilio_leg,
    until,
)
from tests.control.webhook_receiver import Answer, receiver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(150),
    pytest.mark.asyncio(loop_scope="module"),
]

DRAIN_SECONDS = 30.0  # far longer than a test: a drain must end because its calls did
TRANSIENT = {
    "name": "Night shift",
    "firstMessage": "Night desk, how can I help?",
    "model": {"provider": "local", "fallbackReply": REPLIES[0]},
    "voice": {"provider": "openai", "voiceId": "alloy"},
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
}
NIGHT_NUMBER = "+14155550178"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clusters(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Clusters]:
    held = Clusters(
        tmp_path_factory.mktemp("nodes-nginx"), drain_seconds=DRAIN_SECONDS, single_worker=True
    )
    try:
        yield held
    finally:
        await held.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def c(clusters: Clusters) -> Cluster:
    return await clusters.get()


async def test_a_call_through_nginx_lands_on_a_node_and_is_read_through_it(c: Cluster) -> None:
    mark = c.access_log_size()
    asked_before = {n.node_id: len(n.llm.chat_requests) for n in c.nodes}
    # A webhook signed for another host, that host forged in X-Forwarded-Host: nginx sets the
    # header from the Host it was sent to, so the node rebuilds the balancer's URL and refuses.
    forged = {"AccountSid": ACCOUNT, "CallSid": "CA" + uuid.uuid4().hex, "From": CALLER,
              "To": NUMBER, "Called": NUMBER, "CallStatus": "ringing"}  # fmt: skip
    async with httpx.AsyncClient() as http:
        refused = await http.post(
            f"{c.lb}/twilio/voice",
            data=forged,
            headers={
                "X-Forwarded-Host": "forged.example",
                "X-Twilio-Signature": compute_signature(
                    AUTH_TOKEN, "http://forged.example/twilio/voice", forged
                ),
            },
        )
    assert refused.status_code == 403, refused.text

    question, _ = await asyncio.to_thread(caller_speech)
    report = await place_call(
        c.lb,
        CallScript([question], max_seconds=30),
        auth_token=AUTH_TOKEN,
        to_number=NUMBER,
        fetch_record=False,
    )
    assert report.error is None, report.error
    assert report.ok and len(report.turns) == 1

    async with httpx.AsyncClient(base_url=c.lb, headers=c.auth) as http:
        calls = (await http.get("/call")).json()
        [call_id] = [call["id"] for call in calls if call["phoneCallProviderId"] == report.call_sid]

        async def ended() -> dict[str, Any]:
            for _ in range(200):
                call: dict[str, Any] = (await http.get(f"/call/{call_id}")).json()
                if call["status"] == "ended" and call.get("messages"):
                    return call
                await asyncio.sleep(0.05)
            raise AssertionError(f"call {call_id} never ended: {call}")

        call = await ended()
    said = [(m["role"], m["message"]) for m in call["messages"] if m["role"] != "system"]
    assert ("user", HEARD[0]) in said
    assert ("bot", REPLIES[0]) in said
    # The same record through either node directly: both read the shared database.
    for node in c.nodes:
        async with httpx.AsyncClient(base_url=node.base, headers=c.auth) as http:
            direct = (await http.get(f"/call/{call_id}")).json()
        assert direct["id"] == call_id and direct["status"] == "ended"
    # One node held the call's session: the one its record names, whose model answered it.
    record = await c.stores.calls.get_call(c.tenant_id, call_id)
    assert record is not None and record.node_id is not None
    holder, other = c.node(record.node_id), c.other(c.node(record.node_id))

    def asked(node: Node) -> list[str]:
        requests = node.llm.chat_requests[asked_before[node.node_id] :]
        return [r["messages"][-1].get("content") for r in requests]

    assert HEARD[0] in asked(holder) and HEARD[0] not in asked(other)

    # nginx's log says which node served what: the webhook and the media websocket each went to
    # a node (the websocket upgraded through the balancer, to the node holding the call), and
    # the API reads were spread over both.
    def media() -> list[tuple[str, str]]:
        return [
            (status, up) for request, status, up in c.served(mark) if "/twilio/media" in request
        ]

    await until(lambda: bool(media()), 10)  # logged once the websocket has closed
    assert media() == [("101", holder.upstream)]
    served = c.served(mark)
    upstreams = {n.upstream for n in c.nodes}
    [webhook] = [
        u for request, status, u in served if "/twilio/voice" in request and status == "200"
    ]
    assert webhook in upstreams
    reads = {upstream for request, _, upstream in served if request.startswith("GET /call")}
    assert reads == upstreams


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


async def test_every_control_and_the_listen_url_work_through_the_other_node(c: Cluster) -> None:
    async with twilio_leg(c) as leg, twilio_leg(c) as forwarded:
        # --- transfer, on one call: through the node not holding it --------------------------
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
            await until(lambda: bool(updates), 10)  # the holder told Twilio to dial
            assert "+15551112222</Dial>" in updates[0]["Twiml"]

            async def forwarded_ended() -> bool:
                call = (await http.get(f"/call/{forwarded_id}")).json()
                return bool(call.get("endedReason") == "assistant-forwarded-call")

            await polled(forwarded_ended, "the transferred call ended as forwarded")

        # --- everything else, on the other call -----------------------------------------------
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
                return any(m["role"] == "bot" and m["message"] == text for m in call["messages"])

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
                await until(lambda: leg.line.media_received > 0 and leg.all_played(), 10)

                # say: answered at once (this node → Redis → the holder → Redis → this node),
                # the caller hears it, the listener too, and it is on the record
                before, heard_before = leg.line.media_received, len(pcm) - len(pcm) % 4
                asked = time.monotonic()
                said = await control({"type": "say", "content": "Your order has shipped."})
                assert time.monotonic() - asked < 1.0
                assert said["status"] == "sent" and said["type"] == "say"
                assert f"sent to call {call_id}" in said["message"]
                await until(lambda: leg.line.media_received > before, 10)
                await until(lambda: _loud(bytes(pcm[heard_before:]), channel=1), 10)
                await polled(lambda: bot_said("Your order has shipped."), "say recorded")

                # mute: a say is played (its marks come back) but none of its audio is sent
                await control({"type": "mute-assistant"})
                await until(leg.all_played, 10)
                before, marks = leg.line.media_received, leg.line.marks_received
                await control({"type": "say", "content": "Nobody hears this."})
                await until(lambda: leg.line.marks_received > marks and leg.all_played(), 10)
                assert leg.line.media_received == before
                await control({"type": "unmute-assistant"})
                await control({"type": "say", "content": "Back again."})
                await until(lambda: leg.line.media_received > before, 10)

                # add-message: into the holder's model context (its fake OpenAI is asked with
                # it last), answered at once; the other node's model never sees it
                note = {"role": "system", "content": NOTE}
                await control({"type": "add-message", "message": note})
                await until(lambda: holder.asked(NOTE), 10)
                assert not other.asked(NOTE)
                await polled(lambda: bot_said(ANSWER), "the answer to add-message recorded")

                # end-call: the holder's session hangs up, Twilio's leg too, and the
                # listener on this node is closed normally
                ended = await control({"type": "end-call"})
                assert ended["status"] == "ended"
                assert ended["endedReason"] == "manually-canceled"
                await asyncio.wait_for(leg.closed.wait(), 10)
                await asyncio.wait_for(listening, 10)
                assert listener.close_code == CLOSE_ENDED
                await until(lambda: c.twilio.calls[leg.call_sid].status == "completed", 10)

            final: dict[str, Any] = (await http.get(f"/call/{call_id}")).json()
        spoken = {m["message"] for m in final["messages"] if m["role"] == "bot"}
        assert {"Your order has shipped.", "Back again.", ANSWER} <= spoken
        assert final["status"] == "ended" and final["endedReason"] == "manually-canceled"
    # The holder's session ended with the API's reason too (what its webhooks report).
    await until(lambda: "manually-canceled" in holder.log.read_text(), 10)


async def test_a_transient_assistant_answered_on_one_node_runs_the_call_on_another(
    c: Cluster,
) -> None:
    a, b = c.nodes
    question, _ = await asyncio.to_thread(caller_speech)
    c.twilio.add_number(ACCOUNT, NIGHT_NUMBER)  # the import looks it up in the account
    async with receiver() as hooks, httpx.AsyncClient(base_url=c.lb, headers=c.auth) as api:
        number = await api.post(
            "/phone-number",
            json={
                "provider": "twilio", "number": NIGHT_NUMBER, "twilioAccountSid": ACCOUNT,
                "twilioAuthToken": AUTH_TOKEN, "server": hooks.server(),
            },
        )  # fmt: skip
        assert number.status_code == 201, number.text
        hooks.answers["assistant-request"] = Answer.json(
            {"assistant": {**TRANSIENT, "server": hooks.server()}}
        )
        # Twilio has B's URL, but the webhook reaches A (as a balancer may send it): A asks for
        # the assistant, and its TwiML sends the stream to B.
        async with twilio_leg(c, number=NIGHT_NUMBER, public=b.base, first_hop=a.base) as leg:
            (request,) = hooks.messages("assistant-request")
            call_id = request["call"]["id"]
            assert await c.located(leg.call_sid) == (call_id, b)
            await until(lambda: leg.line.media_received > 0 and leg.all_played(), 10)
            leg.say(question)

            async def answered() -> bool:
                call = (await api.get(f"/call/{call_id}")).json()
                return any(m["message"] == REPLIES[0] for m in call["messages"])

            await polled(answered, "the transient assistant's answer recorded")
        record = await c.stores.calls.get_call(c.tenant_id, call_id)
        for _ in range(100):  # the hang-up is B's to record
            if record is not None and record.status == "ended":
                break
            await asyncio.sleep(0.05)
            record = await c.stores.calls.get_call(c.tenant_id, call_id)
    # the webhook was A's, the call B's, on the assistant A was given
    assert record is not None and record.node_id == b.node_id
    assert record.ended_reason == "customer-ended-call"
    said = [(m.role, m.message) for m in record.messages if m.role != "system"]
    assert said == [("bot", "Night desk, how can I help?"), ("user", HEARD[0]), ("bot", REPLIES[0])]
    # taken from the shared store: nothing is left in Redis for a replayed stream on any node
    redis = Redis.from_url(c.redis_url)
    try:
        assert await redis.exists(f"ava:pending-assistant:{c.tenant_id}:{call_id}") == 0
    finally:
        await redis.aclose()


async def _messages(c: Cluster, node: Node, call_id: str) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(base_url=node.base, headers=c.auth) as http:
        call = (await http.get(f"/call/{call_id}")).json()
    return [(m["role"], m["message"]) for m in call.get("messages", []) if m["role"] != "system"]


async def _turn(c: Cluster, leg: Leg, node: Node, call_id: str, speech: bytes, reply: str) -> None:
    """The caller says `speech` once the assistant is quiet; the reply is heard and recorded."""
    await until(lambda: leg.line.media_received > 0 and leg.all_played(), 10)
    leg.say(speech)
    await until(lambda: not leg.speech, 10)

    async def answered() -> bool:
        return ("bot", reply) in await _messages(c, node, call_id)

    await polled(answered, f"{reply!r} recorded")


async def _ready(node: Node) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{node.base}/readyz")).status_code


async def test_a_rolling_restart_and_a_node_killed_meanwhile(c: Cluster) -> None:
    first, second = await asyncio.to_thread(caller_speech)
    mark = c.access_log_size()
    async with twilio_leg(c) as live:
        call_id, a = await c.located(live.call_sid)
        b = c.other(a)
        # A's replacement, started first as a rolling restart does (a new process and node
        # id) while A holds a live call: neither its startup sweep nor its periodic ones may
        # touch that call.
        replacement = await c.start_node("r1")
        await asyncio.sleep(TTL + HEARTBEAT)  # any wrong sweep would have run by now
        record = await c.stores.calls.get_call(c.tenant_id, call_id, details=False)
        assert record is not None and record.status == "in-progress"
        await until(lambda: live.line.media_received > 0 and live.all_played(), 10)
        live.say(first)
        await until(lambda: not live.speech, 10)
        # The caller has spoken; the reply is on its way: SIGTERM, as `ava serve` gets it.
        assert ("bot", REPLIES[0]) not in await _messages(c, a, call_id)
        os.kill(a.server.process.pid, signal.SIGTERM)

        async def a_unready() -> bool:
            return await _ready(a) == 503

        await polled(a_unready, "A's /readyz says 503 once it has the signal", 5)
        assert await _ready(b) == 200

        # A new call the balancer sends to A: redirected, then served by B.
        async with twilio_leg(c, first_hop=a.base) as moved:
            redirect = ElementTree.fromstring(moved.answers[0]).find("Redirect")
            assert redirect is not None
            assert redirect.text == f"{c.lb}/twilio/voice?ava_redirects=1"
            assert len(moved.answers) == 2  # B answered the redirect with the stream
            moved_id, holder = await c.located(moved.call_sid)
            assert holder is b
            await _turn(c, moved, b, moved_id, first, REPLIES[0])
            async with twilio_leg(c, public=b.base) as orphan:  # Twilio has B's URL: on B
                orphan_id, holder = await c.located(orphan.call_sid)
                assert holder is b
                # B dies with both calls (SIGKILL: nothing of it runs).
                os.kill(b.server.process.pid, signal.SIGKILL)
                killed = time.monotonic()
                await b.server.process.wait()
            # A command for the moved call, through A (draining, still serving the API), gets
            # the clear 504 within the deadline; end-call needs no holder: the record is ended
            # and Twilio's leg hung up from A.
            async with httpx.AsyncClient(base_url=a.base, headers=c.auth) as http:
                asked = time.monotonic()
                dead = await http.post(
                    f"/call/{moved_id}/control", json={"type": "say", "content": "Anyone there?"}
                )
                elapsed = time.monotonic() - asked
                closed = await http.post(f"/call/{moved_id}/control", json={"type": "end-call"})
            assert dead.status_code == 504, dead.text
            message = dead.json()["message"]
            assert f"held by node {b.node_id}, which is not answering" in message
            assert f"heartbeat expires within {TTL:g} s" in message
            assert elapsed < CONTROL_TIMEOUT + 0.2, elapsed
            assert closed.status_code == 200, closed.text
            assert closed.json()["status"] == "ended"
            assert closed.json()["endedReason"] == "manually-canceled"
            assert any(
                r.path.endswith(f"/Calls/{moved.call_sid}.json")
                and r.field("Status") == "completed"
                for r in c.twilio.requests
            )

            # The other call nobody ended: a survivor (A or its replacement) closes it once B's
            # heartbeat has expired (within TTL + heartbeat), with the reason that says so, and
            # hangs it up at Twilio; the killed process could do neither.
            async def orphan_closed() -> bool:
                record = await c.stores.calls.get_call(c.tenant_id, orphan_id, details=False)
                return record is not None and record.status == "ended"

            await polled(orphan_closed, "B's orphaned call closed", TTL + 2 * HEARTBEAT + 10)
            closed_after = time.monotonic() - killed
            async with httpx.AsyncClient(base_url=a.base, headers=c.auth) as http:
                state = (await http.get(f"/call/{orphan_id}")).json()
            assert state["endedReason"] == NODE_DIED_REASON
            assert f"{b.node_id} stopped before the call ended" in state["endedMessage"]
            assert closed_after < TTL + 2 * HEARTBEAT + 2.0, closed_after  # the issue: 30 s

            def hang_ups() -> list[RecordedRequest]:
                return [
                    r for r in c.twilio.requests
                    if r.path.endswith(f"/Calls/{orphan.call_sid}.json")
                    and r.field("Status") == "completed"
                ]  # fmt: skip

            await until(lambda: bool(hang_ups()), 10)
            assert len(hang_ups()) == 1 and hang_ups()[0].username == ACCOUNT

        # The call on A: the turn in flight completes, and another one after it.
        async def first_answered() -> bool:
            return ("bot", REPLIES[0]) in await _messages(c, a, call_id)

        await polled(first_answered, "the reply in flight at SIGTERM recorded")
        await _turn(c, live, a, call_id, second, REPLIES[1])
        assert a.alive  # still draining: the call is live
        hung_up = time.monotonic()
    # The caller hung up: A's drain is over, and its process gone, long before DRAIN_SECONDS.
    assert await asyncio.wait_for(a.server.process.wait(), 15) == 0
    os.kill(replacement.server.process.pid, signal.SIGTERM)  # it has no calls: exits at once
    assert time.monotonic() - hung_up < DRAIN_SECONDS / 2
    # Both nodes are gone: the record, in the shared database, has every turn in order.
    record = await c.stores.calls.get_call(c.tenant_id, call_id)
    assert record is not None
    said = [(m.role, m.message) for m in record.messages if m.role != "system"]
    assert said == [
        ("bot", GREETING),
        ("user", HEARD[0]), ("bot", REPLIES[0]),
        ("user", HEARD[1]), ("bot", REPLIES[1]),
    ]  # fmt: skip
    assert record.status == "ended"
    assert record.ended_reason == "customer-ended-call"  # not cut off by the drain

    # nginx sent the redirected webhook, and then the new call's media stream, to B.
    def media() -> list[tuple[str, str]]:
        return sorted((status, u) for r, status, u in c.served(mark) if "/twilio/media" in r)

    await until(lambda: len(media()) == 2, 10)  # logged as each websocket closes
    assert media() == sorted([("101", a.upstream), ("101", b.upstream)])
    served = c.served(mark)
    [redirected] = [u for r, _, u in served if "/twilio/voice?ava_redirects=1" in r]
    assert redirected == b.upstream
