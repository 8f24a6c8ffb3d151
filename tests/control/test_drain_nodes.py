"""A rolling restart across two nodes (issue 11): node A holds a live call when it gets SIGTERM
(the drain `ava serve` runs, triggered in-process as the signal handler does), behind
docker/nginx.conf with node B.

The call on A goes on: the turn in flight when the signal came completes, the caller asks again
and is answered, and nothing completed is lost (every turn's messages are on the record); the
caller hangs up and A's drain ends at once instead of waiting out `drain_seconds`. Meanwhile
A's `/readyz` says 503, and a new Twilio call the balancer sends to A gets a `<Redirect>` to
the service's URL, which nginx sends to B; B serves that call.
"""

from __future__ import annotations

import signal
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import httpx
import pytest

from tests.conftest import AssistantFactory
from tests.control.test_nodes_nginx import (
    SPEECH,
    Cluster,
    Leg,
    Node,
    _polled,
    _served,
    _until,
    cluster,
    twilio_leg,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(90)]

HEARD = ["What are your hours?", "Where are you?"]
REPLIES = ["We open at nine.", "On Main Street."]
DRAIN_SECONDS = 30.0  # far longer than the test: the drain must end because the call did


async def _messages(c: Cluster, node: Node, call_id: str) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(base_url=node.base, headers=c.auth) as http:
        call = (await http.get(f"/call/{call_id}")).json()
    return [(m["role"], m["message"]) for m in call.get("messages", []) if m["role"] != "system"]


async def _turn(c: Cluster, leg: Leg, node: Node, call_id: str, reply: str) -> None:
    """The caller says SPEECH once the assistant is quiet; the reply is heard and recorded."""
    await _until(lambda: leg.line.media_received > 0 and leg.all_played(), 10)
    leg.say(SPEECH)
    await _until(lambda: not leg.speech, 10)

    async def answered() -> bool:
        return ("bot", reply) in await _messages(c, node, call_id)

    await _polled(answered, f"{reply!r} recorded")


async def test_sigterm_drains_a_node_while_the_other_takes_new_calls(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> None:
    async with cluster(
        tmp_path, assistant_file, redis_url, heard=HEARD, replies=REPLIES,
        drain_seconds=DRAIN_SECONDS, single_worker=True,
    ) as c:  # fmt: skip
        async with twilio_leg(c) as live:
            call_id, a = await c.located(live.call_sid)
            b = c.other(a)
            await _until(lambda: live.line.media_received > 0 and live.all_played(), 10)
            live.say(SPEECH)
            await _until(lambda: not live.speech, 10)
            # The caller has spoken; the reply is on its way: SIGTERM, as `ava serve` gets it.
            assert REPLIES[0] not in str(a.app.state.ava.calls.records[call_id].messages)
            a.app.state.server.handle_exit(signal.SIGTERM, None)
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{a.base}/readyz")).status_code == 503
                assert (await http.get(f"{b.base}/readyz")).status_code == 200

            # A new call the balancer sends to A: redirected, then served by B.
            async with twilio_leg(c, first_hop=a.base) as moved:
                redirect = ElementTree.fromstring(moved.answers[0]).find("Redirect")
                assert redirect is not None
                assert redirect.text == f"{c.lb}/twilio/voice?ava_redirects=1"
                assert len(moved.answers) == 2  # B answered the redirect with the stream
                moved_id, holder = await c.located(moved.call_sid)
                assert holder is b
                await _turn(c, moved, b, moved_id, REPLIES[0])

            # The call on A: the turn in flight completes, and another one after it.
            async def first_answered() -> bool:
                return ("bot", REPLIES[0]) in await _messages(c, a, call_id)

            await _polled(first_answered, "the reply in flight at SIGTERM recorded")
            await _turn(c, live, a, call_id, REPLIES[1])
            assert not a.app.state.server.should_exit  # still draining: the call is live
        # The caller hung up: A's drain is over long before DRAIN_SECONDS.
        await _until(lambda: bool(a.app.state.server.should_exit), 10)
        said = await _messages(c, b, call_id)  # read through the node that stays
        assert said == [
            ("bot", "Hello, this is Ava. How can I help you today?"),
            ("user", HEARD[0]), ("bot", REPLIES[0]),
            ("user", HEARD[1]), ("bot", REPLIES[1]),
        ]  # fmt: skip
        async with httpx.AsyncClient(base_url=b.base, headers=c.auth) as http:
            ended = (await http.get(f"/call/{call_id}")).json()
        assert ended["status"] == "ended"
        assert ended["endedReason"] == "customer-ended-call"  # not cut off by the drain
    # nginx sent the redirected webhook, and then the new call's media stream, to B.
    served = _served(tmp_path / "access.log")
    upstream_b = b.base.removeprefix("http://")
    [redirected] = [u for r, _, u in served if "/twilio/voice?ava_redirects=1" in r]
    assert redirected == upstream_b
    # (logged as each websocket closes: the moved call's first)
    media = sorted((status, u) for r, status, u in served if "/twilio/media" in r)
    assert media == sorted([("101", a.base.removeprefix("http://")), ("101", upstream_b)])
