"""One user's heaviest inputs must not stall the others (the event loop is shared by
every protocol), and the loop's lag is measured and explained.

While one user runs the heaviest input of each protocol, /healthz and an IMAP NOOP on
other connections keep answering within 0.5 s (a functional bound, generous on purpose:
bench/isolation.py measures the lag itself). /metrics exposes the lag histogram, and a
callback holding the loop past ``slow_callback`` is logged naming protocol, user and
command.
"""

from __future__ import annotations

import imaplib
import os
import re
import secrets
import smtplib
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from conftest import AgoraServer, ServerFactory, wait_for
from mail_support import SERVER_ENV, TIMEOUT, unverified

DOMAIN = "a.test"
BOUND = 0.5  # seconds: the acceptance's functional bound for the bystanders' answers
BIG_MESSAGE = 50 * 1000 * 1000
MANY_FILES = 100_000
RECIPIENTS = 10_000
MIME_DEPTH = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"isolation-{backend}"), backend)
    env = {**SERVER_ENV, "AGORA_MAIL_MAX_RECIPIENTS": str(RECIPIENTS),
           "AGORA_MAIL_MAX_MESSAGE": "64M", "AGORA_MAIL_ROUTES": '{"remote.example": "127.0.0.1:9"}'}
    try:
        yield factory(env=env, args=("--mail-domains", f"{DOMAIN},localhost"))
    finally:
        factory.close()


@pytest.fixture(scope="module")
def attacker(server) -> tuple[str, str]:
    return server.create_user()


class Bystanders:
    """Other clients asking /healthz and IMAP NOOP in turn while a heavy input runs; the
    slowest answer of each is kept."""

    def __init__(self, server: AgoraServer):
        self.server = server
        self.worst = {"healthz": 0.0, "noop": 0.0}
        self.answers = 0
        self._stop = threading.Event()
        self.imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=TIMEOUT)
        self.imap.login(*server.create_user())
        self.http = httpx.Client(base_url=server.url, timeout=TIMEOUT)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _time(self, name: str, call: Callable[[], object]) -> None:
        started = time.monotonic()
        call()
        self.worst[name] = max(self.worst[name], time.monotonic() - started)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._time("healthz", lambda: self.http.get("/healthz").raise_for_status())
            self._time("noop", lambda: self.imap.noop())
            self.answers += 1
            self._stop.wait(0.02)

    def __enter__(self) -> "Bystanders":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.imap.logout()
        self.http.close()
        assert self.answers > 0
        assert self.worst["healthz"] < BOUND and self.worst["noop"] < BOUND, self.worst


def imap_login(server: AgoraServer, user: tuple[str, str]) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=120)
    client.login(*user)
    return client


def big_message() -> bytes:
    line = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor\r\n"
    body = line * (BIG_MESSAGE // len(line))
    return (f"From: x@{DOMAIN}\r\nTo: y@{DOMAIN}\r\nSubject: big\r\n\r\n").encode() + body


def deep_message() -> bytes:
    head, tail = [], []
    for level in range(MIME_DEPTH):
        boundary = f"b{level}"
        head.append(f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n--{boundary}\r\n')
        tail.append(f"\r\n--{boundary}--\r\n")
    return (f"From: x@{DOMAIN}\r\nTo: y@{DOMAIN}\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
            + "".join(head) + "Content-Type: text/plain\r\n\r\ninnermost\r\n" + "".join(reversed(tail))).encode()


def test_search_body_over_a_50_mb_message(server, attacker):
    with imap_login(server, attacker) as client:
        client.append("INBOX", None, None, big_message())
        client.select("INBOX")
        with Bystanders(server):
            for key in ("BODY", "TEXT"):
                status, data = client.uid("SEARCH", key, f'"needle-{secrets.token_hex(4)}"')
                assert status == "OK" and data == [b""]
            status, data = client.uid("SEARCH", "BODY", '"adipiscing"')
            assert status == "OK" and data[0]


def webmail(server: AgoraServer, name: str, password: str) -> httpx.Client:
    """A browser's session: logged in through the form, as the webmail wants."""
    http = server.client()
    form = http.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf is not None
    response = http.post("/login", data={"username": name, "password": password, "csrf_token": csrf[1],
                                         "next": "/mail"})
    assert response.status_code == 303, response.text
    return http


def test_deep_mime_nesting(server, attacker):
    token = server.login(*attacker)
    with imap_login(server, attacker) as client, closing(webmail(server, *attacker)) as browser:
        client.create("Deep")
        client.append("Deep", None, None, deep_message())
        client.select("Deep")
        with Bystanders(server), server.client(token) as http:
            status, data = client.fetch("1", "(BODYSTRUCTURE BODY[1.1.1.1] BODY[TEXT])")
            assert status == "OK" and b"BODYSTRUCTURE" in data[0][0]
            # The text parts past mime_structure.MAX_DEPTH are one opaque leaf: the
            # search goes through all of it and finds the subject.
            status, data = client.uid("SEARCH", "TEXT", '"deep"')
            assert status == "OK" and len(data[0].split()) == 1
            uid = int(data[0])
            assert http.get(f"/api/v1/mail/folders/Deep/messages/{uid}").status_code == 200
            page = browser.get("/mail/message", params={"folder": "Deep", "uid": uid})
            assert page.status_code == 200 and "deep" in page.text


def make_files(folder: Path, count: int) -> None:
    """``count`` empty files made on disk beside the server: the store is the folder."""
    folder.mkdir(parents=True)
    for n in range(count):
        os.close(os.open(folder / f"f{n:06}.txt", os.O_CREAT | os.O_WRONLY, 0o600))


def test_propfind_and_listing_of_100000_files(server, attacker):
    name, password = attacker
    token = server.login(name, password)
    with server.client(token) as http:  # the user's home folder exists once used
        assert http.post("/api/v1/files/mkdir", json={"path": "/warm"}).status_code == 201
    make_files(server.data_dir / "files" / name / "many", MANY_FILES)
    auth = (name, password)
    with Bystanders(server), server.client() as http:
        response = http.request("PROPFIND", "/dav/many/", auth=auth, headers={"Depth": "infinity"})
        assert response.status_code == 403
        response = http.request("PROPFIND", "/dav/many/", auth=auth, headers={"Depth": "1"}, timeout=120)
        assert response.status_code == 207
        assert response.text.count("<D:response>") == MANY_FILES + 1
        response = http.get("/api/v1/files/list/many", headers={"Authorization": f"Bearer {token}"},
                            timeout=120)
        assert response.status_code == 200 and len(response.json()["entries"]) == MANY_FILES


def test_message_with_10000_recipients(server, attacker):
    name, password = attacker
    recipients = [f"r{n}@remote.example" for n in range(RECIPIENTS)]
    raw = (f"From: {name}@{DOMAIN}\r\nTo: " + ",\r\n ".join(recipients)
           + "\r\nSubject: to everyone\r\n\r\nHello all.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=120) as client:
        client.starttls(context=unverified())
        client.login(name, password)
        with Bystanders(server):
            refused = client.sendmail(f"{name}@{DOMAIN}", recipients, raw)
    assert refused == {}


def lag_histogram(server: AgoraServer) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    return {match[1]: float(match[2])
            for match in re.finditer(r'^agora_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)}


def test_metrics_export_the_loop_lag_histogram(server):
    first = lag_histogram(server)
    assert "+Inf" in first and "0.1" in first
    # The loop is sampled continuously: the count grows on its own.
    assert wait_for(lambda: lag_histogram(server)["+Inf"] > first["+Inf"])


def test_slow_callback_warning_names_protocol_user_and_command(caplog):
    """A deliberately tiny threshold and a command that blocks the loop on purpose: the
    watchdog names the protocol, user and command while it holds, and the lag after."""
    import asyncio
    import logging

    from agora.core import looplag

    def said(pattern: str) -> bool:
        return any(re.search(pattern, r.getMessage()) for r in caplog.records if r.name == "agora.looplag")

    during = r"held for more than 0\.020 s by imap user alice command 'A7 SEARCH' in .*session"
    after = r"was held for 0\.[2-9]\d* s by imap user alice command 'A7 SEARCH'"

    async def main() -> None:
        monitor = looplag.LoopLag()
        monitor.start(0.02)
        try:
            async def session() -> None:
                looplag.begin("imap", "A7 SEARCH", "alice")
                time.sleep(0.3)  # the blocking callback under test
            await asyncio.create_task(session())
            async with asyncio.timeout(10):  # the next tick reports the stall's length
                while not said(after):
                    await asyncio.sleep(0.01)
        finally:
            monitor.stop()
        # ... and the histogram has it: one sample at least 0.25 s late.
        assert sum(count for bound, count in zip(looplag.BOUNDS, monitor.counts) if bound > 0.25) >= 1

    with caplog.at_level(logging.WARNING, logger="agora.looplag"):
        asyncio.run(main())
    assert said(during), caplog.text


@pytest.mark.parametrize("encoding", ["8bit", "base64", "quoted-printable"])
def test_a_big_message_is_searched_in_slices_as_it_would_be_whole(monkeypatch, encoding):
    import base64
    import quopri

    from agora.mail import message
    from agora.mail.imap import search

    # Slices of 97 bytes: every cut lands inside lines, characters, quartets and escapes.
    monkeypatch.setattr(message, "SLICE_BYTES", 97)
    monkeypatch.setattr(search, "LARGE", 0)
    words = ["héllo", "Wörld", "STRASSE", "straße", "ΣΊΣΥΦΟΣ", "日本語", "x" * 150]
    text = "\r\n".join(" ".join(words[(n * 7 + k) % len(words)] for k in range(n % 9)) for n in range(300))
    data = text.encode()
    body = {"8bit": data, "base64": base64.encodebytes(data).replace(b"\n", b"\r\n"),
            "quoted-printable": quopri.encodestring(data).replace(b"\n", b"\r\n")}[encoding]
    raw = (b"Subject: slices\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + encoding.encode()
           + b"\r\n\r\n" + body + b"\r\n--zz\r\nContent-Type: text/plain\r\n\r\nsecond part\r\n--zz--\r\n")
    whole = search.fold(message.body_text_for_search(raw))
    assert b"".join(search.fold(t) for t in message.body_text_slices_for_search(raw)) == whole
    for start in range(0, len(whole) - 12, 53):
        assert search.Raw(raw).body_has(whole[start:start + 12])
        assert search.Raw(raw).text_has(whole[start:start + 12])
    assert search.Raw(raw).text_has(search.fold("Subject: slices\n"))
    assert not search.Raw(raw).body_has(search.fold("absent needle"))


def test_heavy_work_past_its_deadline_is_answered_with_limit():
    import asyncio

    from agora.core import offload
    from agora.core.errors import TooSlow
    from agora.mail.imap.session import _code

    release = threading.Event()

    async def main() -> None:
        offload.configure(1, 0.2)
        try:
            with pytest.raises(TooSlow) as refused:
                await offload.run(release.wait, 30)
            # The pool's only thread is still busy with it; what comes next waits, then runs.
            release.set()
            assert await offload.run(lambda: 42) == 42
        finally:
            offload.configure(4, 60.0)
        assert _code(refused.value) == "LIMIT"

    asyncio.run(main())
