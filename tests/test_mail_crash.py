"""kill -9 during SMTP load: every message that got 250 is in the Maildir exactly once
after a restart, and nothing half-written is visible (new/ and cur/ hold whole messages)."""

from __future__ import annotations

import email
import email.policy
import smtplib
import threading
from collections import Counter

import pytest

from conftest import kill_mid_load
from test_mail_smtp import SERVER_ENV, maildir, receipt

SENDERS = 20


def make(sender: int, number: int) -> tuple[str, bytes]:
    message_id = f"<load-{sender}-{number}@crash.test>"
    # Mostly 4 KiB, some 256 KiB: big enough that a kill lands mid-write now and then.
    size = 256 * 1024 if number % 7 == 3 else 4096
    line = f"{sender:02d}-{number:06d} ".encode() * 7 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size - 2] + b"\r\n"
    head = (f"From: load{sender}@elsewhere.test\r\nTo: crash@a.test\r\n"
            f"Subject: load {sender}/{number}\r\nMessage-ID: {message_id}\r\n\r\n").encode()
    return message_id, head + body


@pytest.mark.slow
def test_kill_9_under_smtp_load_loses_nothing_acknowledged(make_server):
    server = make_server(env=SERVER_ENV, args=(
        "--mail-domains", "a.test", "--mail-max-connections-per-ip", "100"))
    name, _ = server.create_user()
    port = server.ports["smtp"]
    sent: dict[str, bytes] = {}
    acknowledged: set[str] = set()
    lock = threading.Lock()

    def load(sender: int, stop: threading.Event) -> None:
        number = 0
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                while not stop.is_set():
                    message_id, raw = make(sender, number)
                    number += 1
                    with lock:
                        sent[message_id] = raw
                    client.sendmail(f"load{sender}@elsewhere.test", [f"{name}@a.test"], raw)
                    with lock:  # 250 received
                        acknowledged.add(message_id)
        except (OSError, smtplib.SMTPException):
            pass  # the server is gone

    kill_mid_load(server, load, SENDERS, acknowledged, 300)

    server.start()
    counts: Counter[str] = Counter()
    for path in maildir(server, name):
        raw = path.read_bytes()
        parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
        message_id = parsed["Message-ID"]
        assert message_id in sent, (path, raw[:300])
        assert raw.endswith(b"\r\n" + sent[message_id]), f"{path.name} is not whole"
        counts[message_id] += 1
    missing = acknowledged - set(counts)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"
    assert max(counts.values()) == 1, counts.most_common(3)
    # And the restarted server takes mail as before.
    with receipt(server) as client:
        assert client.sendmail("x@elsewhere.test", [f"{name}@a.test"], make(99, 0)[1]) == {}
