"""Per-API-key rate limits: the token bucket with explicit time, over HTTP against a live
server, and the Redis-backed buckets against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from control.limits import Bucket, LocalRateLimiter, take
from storage.redis_limits import RedisRateLimiter
from tests.conftest import AssistantFactory, migrated_sqlite
from tests.control.conftest import Api, api_app, running_api

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_bucket_arithmetic() -> None:
    bucket = Bucket(tokens=2.0, at=10.0)
    assert take(bucket, 10.0, rate=4.0, burst=2.0) == 0.0
    assert take(bucket, 10.0, rate=4.0, burst=2.0) == 0.0
    assert take(bucket, 10.0, rate=4.0, burst=2.0) == pytest.approx(0.25)
    assert take(bucket, 10.125, rate=4.0, burst=2.0) == pytest.approx(0.125)  # half a token
    assert take(bucket, 10.25, rate=4.0, burst=2.0) == 0.0
    # A long idle refills to the burst, never beyond it.
    assert take(bucket, 100.0, rate=4.0, burst=2.0) == 0.0
    assert bucket.tokens == pytest.approx(1.0)
    # A clock that steps back refills nothing and does not move the bucket's time back.
    assert take(bucket, 50.0, rate=4.0, burst=2.0) == 0.0
    assert take(bucket, 50.0, rate=4.0, burst=2.0) == pytest.approx(0.25)
    assert bucket.at == 100.0


async def test_local_limiter_keys_are_independent_and_bounded() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(rate=1.0, burst=2, clock=clock, max_keys=2)
    assert [await limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert await limiter.acquire("b") == 0.0
    clock.t += 0.5
    assert await limiter.acquire("a") == pytest.approx(0.5)
    clock.t += 0.5
    assert await limiter.acquire("a") == 0.0
    await limiter.acquire("c")  # a third key: the least recently used ("b") is forgotten
    assert set(limiter._buckets) == {"a", "c"}
    with pytest.raises(ValueError):
        LocalRateLimiter(rate=0, burst=1)


@pytest.fixture
async def limited(tmp_path: Path, assistant_file: AssistantFactory) -> AsyncIterator[Api]:
    app = api_app(
        tmp_path,
        assistant_file,
        migrated_sqlite(tmp_path / "db"),
        rate_limit_per_second=2.0,
        rate_limit_burst=3,
    )
    async with running_api(app) as api:
        yield api


async def test_429_after_the_burst_then_recovery_after_refill(limited: Api) -> None:
    clock = Clock()
    limited.app.state.limiter = LocalRateLimiter(rate=2.0, burst=3, clock=clock)
    statuses = [(await limited.a.get("/assistant")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = await limited.a.get("/assistant")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"  # 0.5 s to the next token, in whole seconds
    assert refused.json() == {
        "message": "rate limit exceeded for this API key; retry later",
        "error": "Too Many Requests",
        "statusCode": 429,
    }
    assert refused.headers["x-request-id"]
    # Another key of another tenant has its own bucket.
    assert (await limited.b.get("/assistant")).status_code == 200
    # A refused request takes no token: half a second later exactly one is there.
    clock.t += 0.5
    assert (await limited.a.get("/assistant")).status_code == 200
    assert (await limited.a.get("/assistant")).status_code == 429
    clock.t += 1.5
    statuses = [(await limited.a.get("/assistant")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    metrics = (await limited.a.get("/metrics")).text
    assert "ava_rate_limited_requests_total 3.0" in metrics


async def test_unauthenticated_and_twilio_requests_are_not_limited_per_key(limited: Api) -> None:
    limited.app.state.limiter = LocalRateLimiter(rate=0.001, burst=1, clock=Clock())
    async with httpx.AsyncClient(base_url=limited.base) as anonymous:
        for _ in range(3):
            assert (await anonymous.get("/assistant")).status_code == 401
        for n in range(3):
            response = await anonymous.post("/twilio/voice", data={"CallSid": f"CA{n}"})
            assert response.status_code == 200
    # Bad keys took no token from the real key's bucket.
    assert (await limited.a.get("/assistant")).status_code == 200
    assert (await limited.a.get("/assistant")).status_code == 429


@pytest.mark.redis
async def test_redis_buckets_are_shared_refill_and_expire(redis_url: str) -> None:
    clock = Clock(1_700_000_000.0)
    prefix = f"ava-test:{uuid.uuid4().hex}:"
    # Two limiters: two AVA processes drawing on the same buckets.
    one = RedisRateLimiter(redis_url, rate=2.0, burst=3, prefix=prefix, clock=clock)
    two = RedisRateLimiter(redis_url, rate=2.0, burst=3, prefix=prefix, clock=clock)
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await one.acquire("key_a") == 0.0
        assert await two.acquire("key_a") == 0.0
        assert await one.acquire("key_a") == 0.0
        assert await two.acquire("key_a") == pytest.approx(0.5)
        assert await one.acquire("key_b") == 0.0  # another key, another bucket
        clock.t += 0.25
        assert await one.acquire("key_a") == pytest.approx(0.25)
        clock.t += 0.25
        assert await two.acquire("key_a") == 0.0
        clock.t -= 10  # a process whose clock is behind refills nothing, takes nothing extra
        assert await one.acquire("key_a") == pytest.approx(0.5)
        # The same arithmetic as the in-process bucket, step by step.
        local = Bucket(3.0, 1_700_000_000.0)
        expected = [take(local, 1_700_000_000.0, 2.0, 3.0) for _ in range(3)]
        assert expected == [0.0, 0.0, 0.0]
        # Idle buckets expire once full again (burst / rate = 1.5 s, plus a second).
        ttl = await client.pttl(prefix + "key_a")
        assert 0 < ttl <= 2500
        assert set(await client.hkeys(prefix + "key_a")) == {"tokens", "at"}
    finally:
        await client.delete(prefix + "key_a", prefix + "key_b")
        await client.aclose()
        await one.aclose()
        await two.aclose()


@pytest.mark.redis
async def test_unreachable_redis_lets_requests_through_and_says_so(redis_url: str) -> None:
    errors: list[Exception] = []
    # Nothing listens on port 1: connection refused at once.
    limiter = RedisRateLimiter(
        "redis://127.0.0.1:1/0", rate=1.0, burst=1, on_error=errors.append, timeout=0.5
    )
    try:
        assert await limiter.acquire("key") == 0.0
        assert await limiter.acquire("key") == 0.0
    finally:
        await limiter.aclose()
    assert len(errors) == 2


@pytest.mark.redis
async def test_the_server_limits_through_redis_when_configured(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> None:
    app = api_app(
        tmp_path,
        assistant_file,
        migrated_sqlite(tmp_path / "db"),
        redis_url=redis_url,
        rate_limit_per_second=0.01,  # no refill within the test
        rate_limit_burst=2,
    )
    assert isinstance(app.state.limiter, RedisRateLimiter)
    async with running_api(app) as api:
        statuses = [(await api.a.get("/assistant")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert (await api.b.get("/assistant")).status_code == 200
        key_id = (await api.stores.tenants.list_keys(api.tenant_a))[0].id
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        bucket = await client.hgetall(f"ava:ratelimit:{key_id}")
        assert float(bucket["tokens"]) < 1.0
        await client.delete(f"ava:ratelimit:{key_id}")
    finally:
        await client.aclose()
