"""Login rate limiting: a flood from one address is refused cheaply and locks nobody out."""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import httpx
import pytest

from agora import config as configuration
from agora.core.errors import AuthenticationFailed, RateLimited
from agora.core.identity import ClientInfo
from agora.core.passwords import PasswordHasher
from agora.core.ratelimit import LoginLimiter
from agora.core.runtime import Runtime
from conftest import AgoraServer, ServerFactory

GUESSES = 60
# What is counted here is password checks, not their cost: cheap argon2 keeps it quick.
CHEAP_HASHES = {"AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024", "AGORA_IDENTITY_ARGON2_TIME_COST": "1"}


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


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[AgoraServer]:
    """A server with the old low per-address ceiling, to see that ceiling work at all, and
    a first backoff longer than any test, so that what the limiter allows is exact."""
    factory = ServerFactory(tmp_path_factory.mktemp(f"strict-{backend}"), backend)
    yield factory(env={"AGORA_IDENTITY_LOGIN_FREE_FAILURES_PER_ADDRESS": "20", "AGORA_IDENTITY_LOGIN_BACKOFF_BASE": "300",
                       **CHEAP_HASHES})
    factory.close()


def test_many_names_from_one_address_are_limited_too(strict_server: AgoraServer):
    server = strict_server
    statuses = []
    with server.client(local_address="127.0.0.5") as attacker:
        for attempt in range(40):
            response = attacker.post("/api/v1/tokens", json={"username": f"spray{attempt}", "password": "password1"})
            statuses.append(response.status_code)
    assert 429 in statuses
    assert statuses.count(401) <= 25


def _failed_checks(server: AgoraServer) -> float:
    """Password checks that failed, all protocols, from the server's /metrics."""
    with server.client() as http:
        text = http.get("/metrics").text
    return sum(float(value) for value in re.findall(r'^agora_logins_total\{[^}]*outcome="failed"[^}]*\} (\S+)$',
                                                     text, re.M))


def test_parallel_guesses_get_only_the_allowed_checks(strict_server: AgoraServer):
    """60 wrong passwords for one user sent at once: only as many reach the hash as the
    limiter allows (5 free failures, then one more that starts the backoff)."""
    server = strict_server
    name, password = server.create_user()
    before = _failed_checks(server)

    async def flood() -> list[int]:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.6")
        limits = httpx.Limits(max_connections=GUESSES, max_keepalive_connections=GUESSES)
        async with httpx.AsyncClient(base_url=server.url, transport=transport, limits=limits, timeout=60) as http:
            # Every connection open before the first guess, so the guesses arrive together.
            await asyncio.gather(*(http.get("/healthz") for _ in range(GUESSES)))
            responses = await asyncio.gather(*(
                http.post("/api/v1/tokens", json={"username": name, "password": f"guess-{n}", "name": "x"})
                for n in range(GUESSES)))
        return [response.status_code for response in responses]

    statuses = asyncio.run(flood())
    allowed = 5 + 1
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) <= allowed, statuses
    assert _failed_checks(server) - before <= allowed
    with server.admin() as http:
        entries = http.get("/api/v1/audit", params={"action": "login", "actor": name, "limit": 1000}).json()["entries"]
    assert 1 <= sum(e["outcome"] == "failed" for e in entries) <= allowed
    # The user, elsewhere, logs in.
    with server.client(local_address="127.0.0.7") as user:
        assert user.post("/api/v1/tokens", json={"username": name, "password": password, "name": "x"}).status_code == 201


@pytest.fixture(scope="module")
def nat_server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[AgoraServer]:
    """Default per-address ceiling, and backoff so short that an attacker gets many real
    guesses in a few seconds (more than the old ceiling of 20)."""
    factory = ServerFactory(tmp_path_factory.mktemp(f"nat-{backend}"), backend)
    yield factory(env={"AGORA_IDENTITY_LOGIN_BACKOFF_BASE": "0.01", "AGORA_IDENTITY_LOGIN_BACKOFF_MAX": "0.05",
                       **CHEAP_HASHES})
    factory.close()


def test_users_behind_one_address_keep_logging_in_while_one_is_brute_forced(nat_server: AgoraServer):
    server = nat_server
    nat = "127.0.0.8"
    victim, _ = server.create_user()
    users = [server.create_user() for _ in range(10)]
    stop = threading.Event()
    attacker_statuses: list[int] = []

    def attack() -> None:
        with server.client(local_address=nat) as http:
            while not stop.is_set():
                response = http.post("/api/v1/tokens", json={"username": victim, "password": secrets.token_hex(8)})
                attacker_statuses.append(response.status_code)

    def log_in(user: tuple[str, str]) -> int:
        with server.client(local_address=nat) as http:
            return http.post("/api/v1/tokens", json={"username": user[0], "password": user[1], "name": "x"}).status_code

    attackers = [threading.Thread(target=attack) for _ in range(3)]
    for thread in attackers:
        thread.start()
    try:
        rounds: list[list[int]] = []
        deadline = time.monotonic() + 40
        # Until the attacker has had more real guesses than the old ceiling of 20, and at
        # least two rounds of logins happened meanwhile.
        while (attacker_statuses.count(401) <= 25 or len(rounds) < 2) and time.monotonic() < deadline:
            with ThreadPoolExecutor(len(users)) as pool:
                rounds.append(list(pool.map(log_in, users)))
    finally:
        stop.set()
        for thread in attackers:
            thread.join()
    assert attacker_statuses.count(401) > 25, attacker_statuses.count(401)
    assert set(attacker_statuses) <= {401, 429}  # guessed passwords stay refused
    assert all(status == 201 for statuses in rounds for status in statuses), rounds


# -- the Identity's own counting, with a hasher that counts -------------------------


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_kib=1024, parallelism=1, max_concurrent=2)
        self.checks = 0

    def verify_sync(self, stored_hash: str | None, password: str) -> bool:
        self.checks += 1
        time.sleep(0.01)  # a hash that takes a while, so that guesses overlap
        return super().verify_sync(stored_hash, password)


def _runtime_config(tmp_path):
    return configuration.load({"data_dir": str(tmp_path / "data")}, environ={})


def test_identity_reserves_each_attempt_before_the_hash(tmp_path):
    async def scenario() -> None:
        runtime = await Runtime.open(_runtime_config(tmp_path))
        try:
            identity = runtime.identity
            hasher = CountingHasher()
            identity.hasher = hasher
            await identity.create_user("ivan", "password-123")
            attacker = ClientInfo("192.0.2.7", "test", secure=True)
            results = await asyncio.gather(*(identity.authenticate("ivan", f"guess-{n}", attacker)
                                             for n in range(GUESSES)), return_exceptions=True)
            failed = [r for r in results if isinstance(r, AuthenticationFailed)]
            limited = [r for r in results if isinstance(r, RateLimited)]
            assert len(failed) + len(limited) == GUESSES
            free = runtime.config.identity.login_free_failures
            assert hasher.checks == len(failed) <= free + 1 and len(failed) >= 1
            # SCRAM proofs are counted the same way, before the proof is checked.
            proofs = 0

            def check() -> bool:
                nonlocal proofs
                proofs += 1
                return False

            other = ClientInfo("192.0.2.8", "postgres")
            results = await asyncio.gather(*(identity.record_login("ivan", check, other) for _ in range(GUESSES)),
                                           return_exceptions=True)
            assert proofs == sum(isinstance(r, AuthenticationFailed) for r in results) <= free + 1
            # A right password is given its reservation back: a user who logs in often
            # from a shared address never adds up to its ceiling.
            elsewhere = ClientInfo("192.0.2.9", "test", secure=True)
            for _ in range(10):
                await identity.authenticate("ivan", "password-123", elsewhere)
            assert identity.limiter.retry_after("anyone", "192.0.2.9") == 0
            assert identity.limiter._entries[("addr", "192.0.2.9")].failures == 0
            # Right passwords sent at once (a mail client opening its connections) all
            # log in: past the free failures they wait for the earlier ones' outcome
            # instead of starting a backoff.
            together = ClientInfo("192.0.2.10", "test", secure=True)
            logged_in = await asyncio.gather(*(identity.authenticate("ivan", "password-123", together)
                                               for _ in range(16)))
            assert [user.name for user in logged_in] == ["ivan"] * 16
        finally:
            await runtime.close()

    asyncio.run(scenario())


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


def test_an_attempt_is_counted_when_it_starts():
    clock = Clock()
    limiter = LoginLimiter(free_failures=2, free_failures_per_address=3, base=1.0, maximum=60.0, clock=clock)
    # Three attempts at once: the third has to wait before either of the others ended.
    assert limiter.attempt("bob", "a") == 0
    assert limiter.attempt("bob", "a") == 0
    assert limiter.attempt("bob", "a") == 0
    assert limiter.attempt("bob", "a") > 0
    # A malformed attempt gives its reservation back; a right password forgives the pair
    # and gives the address back its one reserved failure.
    limiter.release("bob", "a")
    limiter.succeeded("bob", "a")
    assert limiter.retry_after("bob", "a") == 0
    assert limiter._entries[("addr", "a")].failures == 1


def test_memory_is_bounded(monkeypatch):
    import agora.core.ratelimit as ratelimit

    monkeypatch.setattr(ratelimit, "MAX_ENTRIES", 50)
    limiter = LoginLimiter()
    for i in range(500):
        limiter.failed(f"user{i}", f"10.0.{i // 250}.{i % 250}")
    assert len(limiter._entries) <= 50
