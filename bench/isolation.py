"""Isolation: how long one user's heaviest inputs hold Agora's event loop, in one run.

    python bench/isolation.py [--keep] [--json out.json]

Every protocol shares one event loop, so whatever one callback computes, every client
of every protocol waits for. This starts `python -m agora serve` on ephemeral loopback
ports in a temporary data dir and, while one user runs each heavy input below, has two
bystanders ask all the time: GET /healthz (over HTTP) and NOOP (over IMAP, logged in
as another user). For each input it prints:

  - the worst event-loop lag: the highest bucket of /metrics'
    agora_event_loop_lag_seconds histogram that grew meanwhile (a timer due every
    50 ms ran that late), so "<= 0.05" means no timer ran more than 50 ms late;
  - the slowest and the median /healthz answer and the slowest NOOP answer;
  - how many "event loop held" warnings (slow_callback, 100 ms) the server logged.

The inputs: an idle baseline; IMAP APPEND of a 50 MB message, then SEARCH BODY and TEXT
over it; a message with MIME nested 10,000 deep (APPEND, FETCH BODYSTRUCTURE and
sections, SEARCH BODY, the webmail API's view of it); PROPFIND Depth: infinity
(refused, 403) and Depth: 1 over a folder of 100,000 files made on disk, and the
files API's listing of it; a message to 10,000 recipients over SMTP submission (with
a 10,000-address To: field); and the hoarding attacks, from 127.0.0.1 while the
/healthz bystander asks from 127.0.0.2: 3,000 HTTP connections that send nothing, a
slowloris of 2,100 (one byte each per second), 3,000 IMAP connects at once, and 60 wrong
passwords for one user sent at once. Agora has no archive (zip) download, so there is
none to measure. There is no reference server here: the lag is Agora's own.
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import json
import os
import re
import resource
import secrets
import shutil
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path
from typing import Callable

from common import CHEAP_HASHING, agora_env, api, start_agora, stop

DOMAIN = "a.test"
BIG_MESSAGE = 50 * 1000 * 1000
MANY_FILES = 100_000
RECIPIENTS = 10_000
MIME_DEPTH = 10_000
SILENT = 3_000
SLOWLORIS = 2_100
CONNECT_BURST = 3_000
GUESSES = 60
HOLD_SECONDS = 3.0
# The bystander's own address: the floods come from 127.0.0.1, and a per-address limit
# that refused the bystander too would measure the limit, not the loop.
BYSTANDER_ADDRESS = "127.0.0.2"
LAG = re.compile(r'^agora_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


# -- the server and its users ---------------------------------------------------------


class Agora:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.password = "pw-" + secrets.token_hex(8)
        self.log = data_dir.parent / "agora.log"
        env = agora_env(self.password, AGORA_MAIL_MAX_RECIPIENTS=str(RECIPIENTS), AGORA_MAIL_MAX_MESSAGE="64M",
                        AGORA_MAIL_DOMAINS=f"{DOMAIN},localhost",
                        AGORA_MAIL_ROUTES='{"remote.example": "127.0.0.1:9"}')
        self.proc, self.ports = start_agora(data_dir, env, ("http", "imap", "submission"), CHEAP_HASHING,
                                            log=self.log)
        self.admin = self.token("admin", self.password)

    def token(self, name: str, password: str) -> str:
        return api(self.ports["http"], "POST", "/api/v1/tokens",
                   {"username": name, "password": password, "name": "bench"})["token"]

    def add_user(self, name: str) -> str:
        password = "pw-" + secrets.token_hex(8)
        api(self.ports["http"], "POST", "/api/v1/users", {"name": name, "password": password}, token=self.admin)
        return password

    def lag(self) -> dict[float, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/metrics", timeout=60) as response:
            text = response.read().decode()
        return {float(bound): float(count) for bound, count in LAG.findall(text)}

    def warnings(self) -> int:
        return self.log.read_text(errors="replace").count("agora.looplag: the event loop was held")


class Bystanders:
    """GET /healthz and IMAP NOOP in turn, every 20 ms, each answer timed."""

    def __init__(self, agora: Agora, user: str, password: str):
        self.port = agora.ports["http"]
        self.imap = imaplib.IMAP4("127.0.0.1", agora.ports["imap"], timeout=120)
        self.imap.login(user, password)
        self.healthz: list[float] = []
        self.noop: list[float] = []
        self.running = threading.Event()
        self.idle = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            if not self.running.is_set():
                self.idle.set()
                self.running.wait()
                self.idle.clear()
            started = time.monotonic()
            connection = HTTPConnection("127.0.0.1", self.port, timeout=120,
                                                    source_address=(BYSTANDER_ADDRESS, 0))
            try:
                connection.request("GET", "/healthz")
                connection.getresponse().read()
            finally:
                connection.close()
            self.healthz.append(time.monotonic() - started)
            started = time.monotonic()
            self.imap.noop()
            self.noop.append(time.monotonic() - started)
            time.sleep(0.02)

    def measure(self, work: Callable[[], None]) -> tuple[float, list[float], list[float]]:
        self.healthz, self.noop = [], []
        self.running.set()
        started = time.monotonic()
        work()
        took = time.monotonic() - started
        while not self.noop:  # at least one answer of each, however quick the work
            if not self.thread.is_alive():
                raise RuntimeError("the bystanders stopped; see the traceback above")
            time.sleep(0.01)
        self.running.clear()
        self.idle.wait()  # the answers in flight land in this round's lists
        return took, self.healthz, self.noop


# -- the heavy inputs -----------------------------------------------------------------


def big_message() -> bytes:
    line = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor\r\n"
    return f"From: x@{DOMAIN}\r\nTo: y@{DOMAIN}\r\nSubject: big\r\n\r\n".encode() + line * (BIG_MESSAGE // len(line))


def deep_message() -> bytes:
    head = "".join(f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n--b{n}\r\n' for n in range(MIME_DEPTH))
    tail = "".join(f"\r\n--b{n}--\r\n" for n in reversed(range(MIME_DEPTH)))
    return (f"From: x@{DOMAIN}\r\nTo: y@{DOMAIN}\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + head
            + "Content-Type: text/plain\r\n\r\ninnermost\r\n" + tail).encode()


def imap(agora: Agora, user: str, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", agora.ports["imap"], timeout=600)
    client.login(user, password)
    return client


def hold(port: int, count: int, seconds: float, trickle: bytes = b"") -> None:
    """``count`` connections from 127.0.0.1 held open ``seconds``; with ``trickle``, each
    sends its next byte every second (a slowloris)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            if trickle:
                for sock in sockets:
                    try:
                        sock.send(trickle[sent % len(trickle):][:1])
                    except OSError:
                        pass  # refused or cut off: what the server is meant to do
                sent += 1
            time.sleep(1)
    finally:
        for sock in sockets:
            sock.close()


def guesses(agora: Agora, user: str) -> None:
    """Wrong passwords for ``user`` sent at once, each on its own connection."""
    def guess(n: int) -> None:
        http(agora, "POST", "/api/v1/tokens", {}, {"username": user, "password": f"guess-{n}", "name": "x"})

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(GUESSES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def http(agora: Agora, method: str, path: str, headers: dict[str, str], body: dict | None = None) -> int:
    """The status of one request (``body``, if any, sent as JSON)."""
    data = None
    if body is not None:
        data, headers = json.dumps(body).encode(), {**headers, "content-type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{agora.ports['http']}{path}", method=method,
                                     headers=headers, data=data)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def attacks(agora: Agora, user: str, password: str) -> dict[str, Callable[[], None]]:
    token = agora.token(user, password)
    bearer = {"Authorization": f"Bearer {token}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(), "Depth": "1"}
    big, deep = big_message(), deep_message()

    def append_big() -> None:
        with imap(agora, user, password) as client:
            client.append("INBOX", None, None, big)

    def search_big() -> None:
        with imap(agora, user, password) as client:
            client.select("INBOX")
            for key in ("BODY", "TEXT"):
                client.uid("SEARCH", key, '"needle-absent"')

    def deep_mime() -> None:
        with imap(agora, user, password) as client:
            client.create("Deep")
            client.append("Deep", None, None, deep)
            client.select("Deep")
            client.fetch("1", "(BODYSTRUCTURE BODY.PEEK[1.1.1.1] BODY.PEEK[TEXT])")
            client.uid("SEARCH", "BODY", '"innermost"')
        http(agora, "GET", "/api/v1/mail/folders/Deep/messages/1", bearer)

    def propfind() -> None:
        assert http(agora, "PROPFIND", "/dav/many/", {**basic, "Depth": "infinity"}) == 403
        assert http(agora, "PROPFIND", "/dav/many/", basic) == 207

    def listing() -> None:
        assert http(agora, "GET", "/api/v1/files/list/many", bearer) == 200

    def recipients() -> None:
        to = [f"r{n}@remote.example" for n in range(RECIPIENTS)]
        raw = (f"From: {user}@{DOMAIN}\r\nTo: " + ",\r\n ".join(to) + "\r\nSubject: all\r\n\r\nHello.\r\n").encode()
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", agora.ports["submission"], timeout=600) as client:
            client.starttls(context=context)
            client.login(user, password)
            client.sendmail(f"{user}@{DOMAIN}", to, raw)

    web, mail = agora.ports["http"], agora.ports["imap"]
    return {"idle (1 s)": lambda: time.sleep(1), "IMAP APPEND 50 MB": append_big,
            "IMAP SEARCH BODY+TEXT, 50 MB": search_big, "MIME nested 10,000 deep": deep_mime,
            "PROPFIND 100,000 files": propfind, "API list 100,000 files": listing,
            "SMTP 10,000 recipients": recipients,
            f"HTTP {SILENT:,} silent connections": lambda: hold(web, SILENT, HOLD_SECONDS),
            f"HTTP slowloris {SLOWLORIS:,}": lambda: hold(web, SLOWLORIS, HOLD_SECONDS, b"GET / HTTP/1.1\r\nX: "),
            f"IMAP {CONNECT_BURST:,} connects at once": lambda: hold(mail, CONNECT_BURST, HOLD_SECONDS),
            f"{GUESSES} wrong passwords at once": lambda: guesses(agora, user)}


def worst_bucket(before: dict[float, float], after: dict[float, float]) -> float:
    """The smallest bound under which every sample taken meanwhile fell."""
    grown = after[float("inf")] - before.get(float("inf"), 0)
    for bound in sorted(after):
        if after[bound] - before.get(bound, 0) >= grown:
            return bound
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    # Thousands of sockets of our own (the server raises its own limit at start).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="agora-bench-"))
    agora = None
    rows = []
    try:
        agora = Agora(work / "data")
        user, other = "heavy", "bystander"
        password = agora.add_user(user)
        api(agora.ports["http"], "POST", "/api/v1/files/mkdir", {"path": "/warm"}, token=agora.token(user, password))
        print(f"making {MANY_FILES:,} files ...", flush=True)
        folder = agora.data_dir / "files" / user / "many"
        folder.mkdir()
        for n in range(MANY_FILES):
            os.close(os.open(folder / f"f{n:06}.txt", os.O_CREAT | os.O_WRONLY, 0o600))
        bystanders = Bystanders(agora, other, agora.add_user(other))
        for name, work_ in attacks(agora, user, password).items():
            print(f"{name} ...", flush=True)
            before, warned = agora.lag(), agora.warnings()
            took, healthz, noop = bystanders.measure(work_)
            rows.append({"input": name, "seconds": took, "worst_lag": worst_bucket(before, agora.lag()),
                         "healthz_max": max(healthz), "healthz_median": statistics.median(healthz),
                         "noop_max": max(noop), "answers": len(healthz), "warnings": agora.warnings() - warned})
    finally:
        if agora is not None:
            stop(agora.proc)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'input':32} {'took':>7} {'worst lag':>10} {'healthz max':>12} {'median':>8} {'NOOP max':>9} "
          f"{'asked':>6} {'warned':>6}")
    for row in rows:
        print(f"{row['input']:32} {row['seconds']:6.1f}s {'<= ' + format(row['worst_lag'], 'g'):>10} "
              f"{row['healthz_max'] * 1000:10.0f}ms {row['healthz_median'] * 1000:6.0f}ms "
              f"{row['noop_max'] * 1000:7.0f}ms {row['answers']:6d} {row['warnings']:6d}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
