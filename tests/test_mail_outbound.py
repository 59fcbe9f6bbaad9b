"""The outbound queue: two Agora servers on loopback as two mail domains (a.test and
b.test, joined by ``mail.routes``), retries while the other one is down, bounces (DSN)
for refused and expired mail; and the queue in-process, where its rows and files can
be watched.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import secrets
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agora import config as configuration
from agora.core.runtime import Runtime
from agora.mail.outbound import outbound_queue
from agora.mail.outbound_smtp import Result, dsn
from agora.mail.store import mail_store
from agora.mail.tables import mail_queue
from conftest import AgoraServer, create_pg_database, drop_pg_database, wait_for
from test_mail_smtp import SERVER_ENV, message, submission

TIMEOUT = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inbox(server: AgoraServer, user: str) -> list[bytes]:
    root = server.data_dir / "mail" / user
    return [p.read_bytes() for sub in ("new", "cur") if (root / sub).is_dir()
            for p in sorted((root / sub).iterdir())]


def queue_files(server: AgoraServer) -> list[Path]:
    return sorted((server.data_dir / "mail-queue").glob("*.eml"))


def send(server: AgoraServer, name: str, password: str, recipients: list[str], raw: bytes) -> dict:
    with submission(server, name, password) as client:
        return client.sendmail(f"{name}@a.test", recipients, raw)


def report(raw: bytes) -> tuple[str, str, str]:
    """(human text, delivery-status, returned headers) of a DSN."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    human, status, headers = parsed.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    status_text = "".join(str(block) for block in status.get_payload())
    return human.get_content(), status_text, headers.get_payload(decode=True).decode()


@pytest.fixture
def domains(make_server):
    """b.test on a port of its own (so it can come back on it), and a.test routing to it."""
    port = free_port()
    b = make_server(env=SERVER_ENV, args=("--mail-domains", "b.test", "--smtp-port", str(port)))
    a = make_server(env=SERVER_ENV, args=(
        "--mail-domains", "a.test", "--mail-routes", f"b.test=127.0.0.1:{port}",
        "--mail-retry-base", "0.5", "--mail-retry-max", "1"))
    return a, b


def test_mail_reaches_another_server_and_waits_while_it_is_down(domains):
    a, b = domains
    ann, password = a.create_user()
    bob, _ = b.create_user()
    _, first = message("across", b"From a.test to b.test.\r\n", sender=f"{ann}@a.test")
    assert send(a, ann, password, [f"{bob}@b.test"], first) == {}
    [got] = wait_for(lambda: inbox(b, bob), timeout=TIMEOUT)
    assert got.endswith(first)
    head = got.split(b"\r\n\r\n")[0]
    assert head.startswith(f"Return-Path: <{ann}@a.test>\r\n".encode())
    assert b"with ESMTPS id" in head  # opportunistic STARTTLS between the servers
    assert b"with ESMTPSA id" in head  # ann's own submission to a.test
    assert wait_for(lambda: queue_files(a) == [], timeout=TIMEOUT)

    b.stop()
    _, second = message("while down", b"Sent while b.test was down.\r\n", sender=f"{ann}@a.test")
    assert send(a, ann, password, [f"{bob}@b.test"], second) == {}  # queued, durably
    assert len(queue_files(a)) == 1
    assert wait_for(lambda: len(re.findall(r"deferred, next attempt", a.log())) >= 2, timeout=TIMEOUT)
    b.start()
    assert wait_for(lambda: len(inbox(b, bob)) == 2, timeout=TIMEOUT)
    assert wait_for(lambda: queue_files(a) == [], timeout=TIMEOUT)
    time.sleep(1.5)  # no retry after success
    copies = [raw for raw in inbox(b, bob) if raw.endswith(second)]
    assert len(copies) == 1
    assert inbox(a, ann) == []  # no bounce


def test_refused_recipient_is_bounced_at_once(domains):
    a, b = domains
    ann, password = a.create_user()
    bob, _ = b.create_user()
    message_id, raw = message("partly refused", sender=f"{ann}@a.test")
    nobody = f"nobody-{secrets.token_hex(3)}@b.test"
    assert send(a, ann, password, [f"{bob}@b.test", nobody], raw) == {}
    assert wait_for(lambda: inbox(b, bob), timeout=TIMEOUT)[0].endswith(raw)
    [bounce] = wait_for(lambda: inbox(a, ann), timeout=TIMEOUT)
    human, status, headers = report(bounce)
    assert nobody in human and "550 5.1.1" in human
    assert f"Final-Recipient: rfc822; {nobody}" in status and "Action: failed" in status
    assert "Status: 5.1.1" in status and f"{bob}@b.test" not in status
    assert f"Message-ID: {message_id}" in headers and "Subject: partly refused" in headers
    assert wait_for(lambda: queue_files(a) == [], timeout=TIMEOUT)


def test_undeliverable_mail_is_bounced_after_bounce_after(make_server):
    dead = free_port()  # nothing listens there
    a = make_server(env=SERVER_ENV, args=(
        "--mail-domains", "a.test", "--mail-routes", f"c.test=127.0.0.1:{dead}",
        "--mail-retry-base", "0.3", "--mail-retry-max", "0.5", "--mail-bounce-after", "2"))
    ann, password = a.create_user()
    _, raw = message("never arrives", sender=f"{ann}@a.test")
    started = time.monotonic()
    assert send(a, ann, password, ["someone@c.test"], raw) == {}
    [bounce] = wait_for(lambda: inbox(a, ann), timeout=TIMEOUT)
    assert time.monotonic() - started >= 2
    human, status, headers = report(bounce)
    assert "given up" in human and "someone@c.test" in human
    assert "Final-Recipient: rfc822; someone@c.test" in status and "Status: 4.4.1" in status
    assert "Subject: never arrives" in headers
    assert wait_for(lambda: queue_files(a) == [], timeout=TIMEOUT)
    assert len(re.findall(r"attempt \d+: <[^>]*> -> <someone@c.test>: 451", a.log())) >= 2


# -- in-process -------------------------------------------------------------------------


def test_dsn_is_a_well_formed_report():
    _, original = message("original", b"body\r\n")
    raw = dsn("mx.a.test", "ann@a.test", datetime.now(timezone.utc),
              original, {"x@b.test": Result(550, "5.1.1 no such user"),
                         "y@b.test": Result(451, "timed out")}, expired=True)
    assert b"\r\n" in raw and re.search(rb"[^\r]\n", raw) is None
    human, status, headers = report(raw)
    assert "Reporting-MTA: dns; mx.a.test" in status
    assert "Status: 5.1.1" in status and "Status: 4.0.0" in status
    assert "Diagnostic-Code: smtp; 451 timed out" in status
    assert "Subject: original" in headers and "body" not in headers


@pytest.fixture
def runtime_factory(tmp_path, backend):
    urls: list[str] = []

    async def make(**flags: str) -> Runtime:
        values = {"data_dir": str(tmp_path / "data"), "identity.argon2_time_cost": "1",
                  "identity.argon2_memory_kib": "64", "mail.domains": "a.test",
                  "mail.hostname": "mx.a.test", **flags}
        if backend == "postgresql":
            if not urls:
                urls.append(create_pg_database())
            values["database.url"] = urls[0]
        return await Runtime.open(configuration.load(values, environ={}))

    yield make
    for url in urls:
        drop_pg_database(url)


async def _rows(runtime: Runtime) -> list:
    from sqlalchemy import select
    async with runtime.db.read() as conn:
        return (await conn.execute(select(mail_queue))).all()


def test_queue_is_durable_retries_and_bounces(runtime_factory):
    dead = free_port()

    async def scenario():
        runtime = await runtime_factory(**{
            "mail.routes": f"c.test=127.0.0.1:{dead},d.test=127.0.0.1:{dead}",
            "mail.retry_base": "0.1", "mail.retry_max": "0.2", "mail.bounce_after": "1"})
        try:
            ann = await runtime.identity.create_user("ann", "password-123")
            queue = outbound_queue(runtime)
            _, raw = message("queued")
            # Before the worker runs: the file and the row are there when enqueue returns.
            first = await queue.enqueue("ann@a.test", ["x@c.test", "y@c.test", "X@c.test"], raw)
            assert queue.path(first).read_bytes() == raw
            [row] = await _rows(runtime)
            assert json.loads(row.recipients) == ["x@c.test", "y@c.test", "X@c.test"]
            # Neither a bounce nor a message from a remote sender comes back to a.test.
            await queue.enqueue("", ["z@d.test"], raw)
            await queue.enqueue("someone@d.test", ["w@c.test"], raw)
            await queue.start()
            store = mail_store(runtime)
            for _ in range(100):
                _, messages = await store.messages(ann, "INBOX")
                if messages and not await _rows(runtime):
                    break
                await asyncio.sleep(0.1)
            await queue.stop(1)
            assert await _rows(runtime) == []
            assert list(queue.root.glob("*.eml")) == []
            [meta] = messages
            assert meta.summary is not None
            bounce = await store.read(ann, "INBOX", meta.uid)
            _, status, _ = report(bounce)
            assert status.count("Final-Recipient") == 3 and "x@c.test" in status
        finally:
            await runtime.close()

    asyncio.run(scenario())


def test_enqueue_with_a_dedupe_key_queues_once(runtime_factory):
    async def scenario():
        runtime = await runtime_factory()
        try:
            queue = outbound_queue(runtime)
            key = secrets.token_hex(32)
            ids = {await queue.enqueue("ann@a.test", ["x@c.test"], b"Subject: s\r\n\r\nb\r\n",
                                       dedupe_key=key) for _ in range(2)}
            assert len(ids) == 1 and len(await _rows(runtime)) == 1
        finally:
            await runtime.close()

    asyncio.run(scenario())


def test_next_hop_by_route_and_no_smtp_to_a_closed_port():
    from agora.mail.outbound_smtp import deliver_to_domain, next_hops

    async def scenario():
        assert await next_hops("b.test", {"b.test": "[::1]:2526"}, 1) == [("::1", 2526)]
        results = await deliver_to_domain("c.test", "a@a.test", ["x@c.test"], b"x\r\n",
                                          routes={"c.test": f"127.0.0.1:{free_port()}"},
                                          helo="mx.a.test", timeout=2)
        assert results["x@c.test"].temporary

    asyncio.run(scenario())


def test_two_nodes_share_one_queue_and_deliver_each_message_once(runtime_factory):
    """Two workers over one database and queue directory (as two nodes are): the
    claims let exactly one of them deliver each message."""
    from aiosmtpd.smtp import SMTP

    from agora.mail.outbound import OutboundQueue

    received: list[tuple[str, list[str], bytes]] = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            await asyncio.sleep(0.01)
            received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            return "250 2.0.0 OK"

    async def scenario():
        loop = asyncio.get_running_loop()
        sink = await loop.create_server(lambda: SMTP(Sink(), hostname="sink.test"), "127.0.0.1", 0)
        port = sink.sockets[0].getsockname()[1]
        runtime = await runtime_factory(**{"mail.routes": f"c.test=127.0.0.1:{port}"})
        nodes = [OutboundQueue(runtime), OutboundQueue(runtime)]
        try:
            sent = {}
            for number in range(30):
                _, raw = message(f"message {number}")
                sent[await nodes[number % 2].enqueue("ann@a.test", ["x@c.test", "y@c.test"], raw)] = raw
            for node in nodes:
                await node.start()
            for _ in range(200):
                if len(received) >= 30 and not await _rows(runtime):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert sorted(raw for _, _, raw in received) == sorted(sent.values())
            assert all(envelope[:2] == ("ann@a.test", ["x@c.test", "y@c.test"]) for envelope in received)
            assert list(nodes[0].root.glob("*.eml")) == []
        finally:
            for node in nodes:
                await node.stop(1)
            sink.close()
            await runtime.close()

    asyncio.run(scenario())


def test_next_hop_by_mx_then_address_record(monkeypatch):
    import dns.name
    import dns.resolver

    from agora.mail.outbound_smtp import next_hops

    class MX:
        def __init__(self, preference: int, exchange: str):
            self.preference, self.exchange = preference, dns.name.from_text(exchange)

    answers = {"multi.test": [MX(20, "backup.multi.test."), MX(10, "mx1.multi.test.")],
               "nullmx.test": [MX(0, ".")]}

    async def resolve(name, rdtype, lifetime=None):
        assert rdtype == "MX"
        if name == "gone.test":
            raise dns.resolver.NXDOMAIN()
        if name == "plain.test":
            raise dns.resolver.NoAnswer()
        if name == "broken.test":
            raise dns.resolver.LifetimeTimeout(timeout=1.0, errors=[])
        return answers[name]

    monkeypatch.setattr("dns.asyncresolver.resolve", resolve)

    async def scenario():
        assert await next_hops("multi.test", {}, 1) == [("mx1.multi.test", 25), ("backup.multi.test", 25)]
        assert await next_hops("plain.test", {}, 1) == [("plain.test", 25)]  # RFC 5321 5.1
        gone, null, broken = [await next_hops(d, {}, 1) for d in ("gone.test", "nullmx.test", "broken.test")]
        assert (gone.code, null.code) == (550, 556) and gone.permanent and null.permanent
        assert broken.temporary
        assert await next_hops("multi.test", {"multi.test": "127.0.0.1:2526"}, 1) == [("127.0.0.1", 2526)]

    asyncio.run(scenario())
