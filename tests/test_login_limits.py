"""Login rate limiting: a flood from one address is refused cheaply and locks nobody out."""

from __future__ import annotations

import time


from agora.core.ratelimit import LoginLimiter
from conftest import AgoraServer


def test_flood_from_one_address_gets_429_and_the_user_still_logs_in_elsewhere(server: AgoraServer):
    name, password = server.create_user()
    statuses = []
    started = time.monotonic()
    with server.client(local_address="127.0.0.3") as attacker:
        for attempt in range(200):
            response = attacker.post("/api/v1/tokens", json={"username": name, "password": f"guess-{attempt}"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after = int(response.headers["retry-after"])
                assert retry_after >= 1
                assert response.headers["content-type"].startswith("application/problem+json")
                assert response.json()["type"] == "urn:agora:problem:rate-limited"
        # Even the right password is refused from the flooding address while it is blocked.
        blocked = attacker.post("/api/v1/tokens", json={"username": name, "password": password})
    elapsed = time.monotonic() - started
    assert set(statuses) <= {401, 429}
    assert statuses.count(429) >= 150
    # Blocked attempts are refused before hashing: only a handful ever reach argon2,
    # so 200 tries are cheap (each hash costs tens of ms).
    assert statuses.count(401) <= 10, statuses.count(401)
    assert blocked.status_code == 429
    assert elapsed < 30

    # The real user, from another address, is not locked out.
    with server.client(local_address="127.0.0.4") as user:
        response = user.post("/api/v1/tokens", json={"username": name, "password": password})
    assert response.status_code == 201, response.text

    # The audit log has both: the failures and refusals from .3, the success from .4.
    with server.admin() as http:
        entries = http.get("/api/v1/audit", params={"action": "login", "actor": name, "limit": 1000}).json()["entries"]
    outcomes = {(e["client_addr"], e["outcome"]) for e in entries}
    assert ("127.0.0.3", "failed") in outcomes
    assert ("127.0.0.3", "rate-limited") in outcomes
    assert ("127.0.0.4", "ok") in outcomes


def test_many_names_from_one_address_are_limited_too(server: AgoraServer):
    statuses = []
    with server.client(local_address="127.0.0.5") as attacker:
        for attempt in range(40):
            response = attacker.post("/api/v1/tokens", json={"username": f"spray{attempt}", "password": "password1"})
            statuses.append(response.status_code)
    assert 429 in statuses
    assert statuses.count(401) <= 25


# -- the limiter's arithmetic, on a clock we control ---------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_and_is_capped():
    clock = Clock()
    limiter = LoginLimiter(free_failures=3, free_failures_per_address=100, base=1.0, maximum=8.0, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("bob", "10.0.0.1") == 0
        limiter.failed("bob", "10.0.0.1")
    assert limiter.retry_after("bob", "10.0.0.1") == 0  # three free failures
    waits = []
    for _ in range(6):
        limiter.failed("bob", "10.0.0.1")
        waits.append(limiter.retry_after("bob", "10.0.0.1"))
        clock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    # Other users at that address, and the same user elsewhere, are not affected.
    assert limiter.retry_after("alice", "10.0.0.1") == 0
    assert limiter.retry_after("bob", "10.0.0.2") == 0


def test_success_forgives_the_pair_and_quiet_forgives_everything():
    clock = Clock()
    limiter = LoginLimiter(free_failures=1, free_failures_per_address=100, base=1.0, maximum=60.0, clock=clock)
    limiter.failed("bob", "a")
    limiter.failed("bob", "a")
    assert limiter.retry_after("bob", "a") > 0
    limiter.succeeded("bob", "a")
    assert limiter.retry_after("bob", "a") == 0
    limiter.failed("eve", "b")
    limiter.failed("eve", "b")
    clock.now += 61
    limiter.failed("eve", "b")
    assert limiter.retry_after("eve", "b") == 0  # the old failures were forgotten


def test_address_limit_covers_all_names():
    clock = Clock()
    limiter = LoginLimiter(free_failures=100, free_failures_per_address=2, base=1.0, maximum=60.0, clock=clock)
    for name in ("a", "b", "c"):
        limiter.failed(name, "10.9.9.9")
    assert limiter.retry_after("d", "10.9.9.9") > 0
    assert limiter.retry_after("d", "10.9.9.8") == 0


def test_memory_is_bounded(monkeypatch):
    import agora.core.ratelimit as ratelimit

    monkeypatch.setattr(ratelimit, "MAX_ENTRIES", 50)
    limiter = LoginLimiter()
    for i in range(500):
        limiter.failed(f"user{i}", f"10.0.{i // 250}.{i % 250}")
    assert len(limiter._entries) <= 50
