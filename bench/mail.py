"""Mail: Agora's SMTP, IMAP and IDLE on this machine, IMAP against Dovecot, in one run.

    python bench/mail.py [smtp|imap|idle|all] [--rounds 3] [--keep] [--json out.json]

Needs root for the IMAP part: it installs Debian's dovecot-imapd when absent and runs
Dovecot on a loopback port, its mail processes as a system user made for the run.
Each part starts its own `python -m agora serve` on ephemeral loopback ports in a
temporary data dir and measures:

  (a) smtp: durable SMTP delivery (250 only once the message is fsynced into its
      Maildir) of 4 KiB messages from 32 concurrent clients to the receipt port, each
      client one connection sending RSET/MAIL/RCPT/DATA in a loop (pipelined when the
      server offers PIPELINING); messages/s, next to this disk's fsync/s and to bare
      aiosmtpd that writes, fsyncs and renames each message into a Maildir (the floor
      under any aiosmtpd-based server). Afterwards Agora's Maildir files are counted:
      there must be exactly as many as messages acknowledged.
  (b) imap: `FETCH 1:* (FLAGS ENVELOPE)` and `UID SEARCH` (UNSEEN, FROM, SINCE,
      SUBJECT, BODY) on a 10,000-message INBOX, Agora against Dovecot over two copies of
      the same generated Maildir; the first SELECT (which indexes the Maildir on both)
      is timed on its own, the rest after a warm-up, best of --rounds (ten times as many
      for commands answered within 50 ms), servers taking turns. Ratio = Dovecot's
      time / Agora's time (above 1: Agora is faster).
  (c) idle: 5,000 IMAP connections LOGIN, SELECT INBOX and IDLE at once; one message is
      then delivered over SMTP and the time until every client has seen `EXISTS` is
      measured; the server's RSS before and after gives the memory per connection.

The bench server runs with cheap argon2id settings (time cost 1, 1 MiB) so that
thousands of logins measure IMAP rather than password hashing, and with
mail.max_connections_per_ip raised (every client comes from 127.0.0.1). Absolute
numbers on a shared machine mean little; ratios and the fsync/s beside them do.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import common
from common import agora_env, cpu_seconds, free_port, install_packages, start_agora, stop, wait_port

SMTP_CLIENTS = 32
SMTP_MESSAGES = 150  # per client and round
SMTP_SIZE = 4096
SMTP_USERS = ("alice", "bob", "carol", "dave")
MAILBOX = 10_000
QUICK, QUICK_REPEAT = 0.05, 10  # IMAP commands under 50 ms get 10 times as many rounds
IDLE_CLIENTS = 5000
DOVECOT_PACKAGE = "dovecot-imapd"
MAIL_USER = "agoramail"  # the system user Dovecot reads the Maildir copy as (it refuses uid 0)
# Passed to every bench server: logins must not measure argon2 (see the docstring).
CHEAP_HASHING = [*common.CHEAP_HASHING, "--identity-max-concurrent-hashes", "8"]
CHEAP_ENV = {"AGORA_IDENTITY_ARGON2_TIME_COST": "1", "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024",
             "AGORA_IDENTITY_ARGON2_PARALLELISM": "1"}


# -- setting up ---------------------------------------------------------------------


def ensure_dovecot() -> None:
    if not (Path("/usr/sbin/dovecot").exists() and Path("/usr/lib/dovecot/imap").exists()):
        install_packages([DOVECOT_PACKAGE])


def ensure_mail_user() -> tuple[int, int, bool]:
    """The system user Dovecot's mail processes run as: uid, gid, whether made here."""
    made = False
    try:
        subprocess.run(["id", MAIL_USER], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["useradd", "--system", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", MAIL_USER],
                       check=True)
        made = True
    import pwd
    entry = pwd.getpwnam(MAIL_USER)
    return entry.pw_uid, entry.pw_gid, made


def remove_mail_user() -> None:
    # Dovecot's mail processes may still be exiting: userdel refuses while they run.
    for _ in range(50):
        if subprocess.run(["userdel", MAIL_USER], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    print(f"bench: could not remove the system user {MAIL_USER}", flush=True)


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if target != resource.RLIM_INFINITY and target < wanted and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        print(f"bench: only {soft} file descriptors per process (wanted {wanted})", flush=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Agora:
    data_dir: Path
    extra: list[str] = field(default_factory=list)
    profile: Path | None = None
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return agora_env(self.password)

    def start(self) -> None:
        self.proc, self.ports = start_agora(
            self.data_dir, self.env(), ("http", "smtp", "imap"), profile=self.profile,
            args=["--mail-max-connections-per-ip", "100000", "--mail-quota", "100G", *CHEAP_HASHING, *self.extra],
            required=("smtp", "imap"))

    def add_user(self, name: str, password: str) -> None:
        """Through the CLI, as an admin would; hashed as cheaply as the server hashes."""
        subprocess.run([sys.executable, "-m", "agora", "user", "add", name, "--password-stdin",
                        "--data-dir", str(self.data_dir)], input=password + "\n", text=True, check=True,
                       env={**self.env(), **CHEAP_ENV}, stdout=subprocess.DEVNULL)

    def maildir(self, user: str) -> Path:
        return self.data_dir / "mail" / user

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class Dovecot:
    work: Path
    mail_root: Path
    password: str
    uid: int
    gid: int
    proc: subprocess.Popen | None = None
    port: int = 0

    def start(self) -> None:
        self.port = free_port()
        base = self.work / "dovecot"
        base.mkdir(parents=True, exist_ok=True)
        version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()
        major_minor = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
        # 2.4 renamed the cleartext switch and the mail location settings.
        if major_minor >= (2, 4):
            cleartext = "auth_allow_cleartext = yes"
            location = f"mail_driver = maildir\nmail_path = {self.mail_root}/%{{user}}"
            passdb = f"passdb static {{\n  password = {self.password}\n}}"
            userdb = (f"userdb static {{\n  fields {{\n    uid = {self.uid}\n    gid = {self.gid}\n"
                      f"    home = {self.mail_root}/%{{user}}\n  }}\n}}")
            head = "dovecot_config_version = 2.4.0\ndovecot_storage_version = 2.4.0\n"
        else:
            cleartext = "disable_plaintext_auth = no"
            location = f"mail_location = maildir:{self.mail_root}/%u"
            passdb = f"passdb {{\n  driver = static\n  args = password={self.password}\n}}"
            userdb = (f"userdb {{\n  driver = static\n"
                      f"  args = uid={self.uid} gid={self.gid} home={self.mail_root}/%u\n}}")
            head = ""
        conf = base / "dovecot.conf"
        conf.write_text(f"""{head}
protocols = imap
listen = 127.0.0.1
base_dir = {base / 'run'}
state_dir = {base / 'state'}
log_path = {base / 'dovecot.log'}
ssl = no
{cleartext}
auth_mechanisms = plain login
first_valid_uid = {self.uid}
first_valid_gid = {self.gid}
default_internal_user = dovecot
default_login_user = dovenull
{location}
{passdb}
{userdb}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
        (base / "state").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(base / "stderr.log", "ab"), stdin=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except RuntimeError:
            sys.exit(f"bench: dovecot did not start; see {base}/stderr.log and dovecot.log")

    def stop(self) -> None:
        stop(self.proc, 20)


# -- results ------------------------------------------------------------------------


@dataclass
class Row:
    test: str
    unit: str
    agora: float | None
    peer: float | None = None
    peer_name: str = ""
    target: str = ""          # ">=0.5x" (a ratio) or ">=1000" (Agora's figure itself)
    note: str = ""
    lower_better: bool = False

    @property
    def ratio(self) -> float | None:
        if not self.agora or not self.peer:
            return None
        return self.peer / self.agora if self.lower_better else self.agora / self.peer

    @property
    def met(self) -> str:
        if not self.target:
            return ""
        wanted = float(self.target.lstrip(">=").rstrip("x").replace(",", ""))
        value = self.ratio if self.target.endswith("x") else self.agora
        if value is None:
            return "?"
        return "ok" if value >= wanted else "MISS"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value * 1000:,.1f} ms" if value < 10 else f"{value:,.1f} s"
    if unit == "KiB":
        return f"{value / 1024:,.1f} MiB" if value >= 10 * 1024 else f"{value:,.1f} KiB"
    return f"{value:,.0f} {unit}"


def print_table(rows: list[Row]) -> None:
    print()
    header = f"{'test':52} {'Agora':>14} {'peer':>22} {'ratio':>7} {'target':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio else ""
        peer = f"{fmt(row.peer, row.unit)} {row.peer_name}" if row.peer is not None else ""
        target = f"{row.target} {row.met}" if row.target else ""
        print(f"{row.test:52} {fmt(row.agora, row.unit):>14} {peer:>22} {ratio:>7} {target:>10}")
        if row.note:
            print(f"{'':52} {row.note}")


# -- (a) SMTP -----------------------------------------------------------------------


def fsync_rate(directory: Path, seconds: float = 2.0) -> float:
    """4 KiB writes, each followed by fsync, in one file on the disk the data dir is on."""
    block = os.urandom(4096)
    path = directory / f"fsync-probe-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.write(fd, block)
            os.fsync(fd)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()


_BODY_LINE = b"The quick brown fox jumps over the lazy dog while the bench counts messages.\r\n"


def smtp_message(client: int, number: int, recipient: str, size: int) -> bytes:
    """A message of exactly ``size`` bytes (CRLF, dot-stuffing-free) with its own
    Message-ID, terminated for DATA."""
    head = (f"From: Bench Sender {client} <sender{client}@bench.example>\r\n"
            f"To: <{recipient}>\r\n"
            f"Subject: bench message {client}-{number}\r\n"
            f"Date: {email.utils.formatdate(localtime=True)}\r\n"
            f"Message-ID: <{client}.{number}.{secrets.token_hex(8)}@bench.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    body = (_BODY_LINE * (size // len(_BODY_LINE) + 1))[:size - len(head) - 2] + b"\r\n"
    return head + body + b".\r\n"


async def smtp_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("SMTP server closed the connection")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def smtp_client(port: int, client: int, messages: list[tuple[str, bytes]], acked: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        code, text = await smtp_reply(reader)
        if code != 220:
            raise RuntimeError(f"SMTP greeting: {text!r}")
        writer.write(b"EHLO client%d.bench.example\r\n" % client)
        code, text = await smtp_reply(reader)
        if code != 250:
            raise RuntimeError(f"EHLO: {text!r}")
        pipelining = b"PIPELINING" in text.upper()
        for recipient, message in messages:
            commands = [b"RSET\r\n", b"MAIL FROM:<sender%d@bench.example>\r\n" % client,
                        b"RCPT TO:<%s>\r\n" % recipient.encode(), b"DATA\r\n"]
            codes = []
            if pipelining:
                writer.write(b"".join(commands))
                for _ in commands:
                    codes.append((await smtp_reply(reader))[0])
            else:
                for command in commands:
                    writer.write(command)
                    codes.append((await smtp_reply(reader))[0])
            if codes != [250, 250, 250, 354]:
                raise RuntimeError(f"SMTP client {client}: replies {codes}")
            writer.write(message)
            code, text = await smtp_reply(reader)
            if code != 250:
                raise RuntimeError(f"SMTP client {client}: after DATA {text!r}")
            acked[client] += 1
        writer.write(b"QUIT\r\n")
        await smtp_reply(reader)
    finally:
        writer.close()


def smtp_round(port: int, clients: int, count: int, recipients: list[str]) -> tuple[float, int, float]:
    """Messages/s of one round, how many were acknowledged, and the client's CPU seconds.
    The messages are made before the clock starts: the client must cost little."""
    acked = [0] * clients
    messages = [[(rcpt, smtp_message(c, n, rcpt, SMTP_SIZE))
                 for n in range(count) for rcpt in [recipients[(c + n) % len(recipients)]]]
                for c in range(clients)]

    async def run() -> None:
        await asyncio.gather(*(smtp_client(port, c, messages[c], acked) for c in range(clients)))

    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run())
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return sum(acked) / elapsed, sum(acked), cpu


class _ReferenceHandler:
    """aiosmtpd with the least a durable Maildir delivery needs: the file written and
    fsynced under tmp/, renamed into new/, new/ fsynced, then 250. No recipient check,
    no index: the floor under any aiosmtpd-based server's figure on this machine."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def _write(self, raw: bytes) -> None:
        name = f"{time.time():.6f}.{secrets.token_hex(8)}"
        fd = os.open(self.root / "tmp" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self.root / "tmp" / name, self.root / "new" / name)
        fd = os.open(self.root / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        await asyncio.to_thread(self._write, envelope.original_content)
        return "250 2.0.0 OK"


def serve_reference_smtp(port_file: Path, root: Path) -> None:
    """Run the reference SMTP server (a child process of the bench) until SIGTERM."""
    from aiosmtpd.smtp import SMTP

    async def run() -> None:
        loop = asyncio.get_running_loop()
        handler = _ReferenceHandler(root)
        server = await loop.create_server(lambda: SMTP(handler, decode_data=False, enable_SMTPUTF8=True),
                                          "127.0.0.1", 0)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await stop.wait()
        server.close()

    asyncio.run(run())


def count_maildir(root: Path) -> int:
    return sum(1 for sub in ("new", "cur") if (root / sub).is_dir() for entry in os.scandir(root / sub)
               if entry.is_file())


def bench_smtp(work: Path, args: argparse.Namespace) -> list[Row]:
    print(f"(a) SMTP: {args.smtp_clients} clients x {args.smtp_messages} messages of 4 KiB, "
          f"{args.rounds} rounds ...", flush=True)
    agora = Agora(work / "smtp-data", profile=work / "smtp.prof" if args.profile else None)
    reference = None
    try:
        agora.start()
        for name in SMTP_USERS:
            agora.add_user(name, "pw-" + secrets.token_hex(8))
        recipients = [f"{name}@localhost" for name in SMTP_USERS]
        disk = fsync_rate(agora.data_dir)
        smtp_round(agora.ports["smtp"], 2, 5, recipients)  # warm-up (also makes the Maildirs)
        total = 2 * 5
        port_file = work / "reference-smtp.port"
        reference = subprocess.Popen([sys.executable, __file__, "--reference-smtp", str(port_file),
                                      str(work / "reference-maildir")], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if reference.poll() is not None or time.monotonic() > deadline:
                sys.exit("bench: the reference SMTP server did not start")
            time.sleep(0.05)
        reference_port = int(port_file.read_text())
        smtp_round(reference_port, 2, 5, recipients)
        rates, reference_rates, cpu, client_cpu = [], [], [], []
        for _ in range(args.rounds):
            before = cpu_seconds(agora.proc.pid)
            rate, acked, spent = smtp_round(agora.ports["smtp"], args.smtp_clients, args.smtp_messages, recipients)
            cpu.append((cpu_seconds(agora.proc.pid) - before) / acked * 1000)
            client_cpu.append(spent / acked * 1000)
            rates.append(rate)
            total += acked
            reference_rate = smtp_round(reference_port, args.smtp_clients, args.smtp_messages, recipients)[0]
            reference_rates.append(reference_rate)
            print(f"    Agora {rate:,.0f} messages/s ({acked} acknowledged); "
                  f"aiosmtpd+fsync {reference_rate:,.0f} messages/s", flush=True)
        on_disk = sum(count_maildir(agora.maildir(name)) for name in SMTP_USERS)
    finally:
        if reference is not None and reference.poll() is None:
            reference.terminate()
            reference.wait(10)
        agora.stop()
    if args.profile:
        print(f"    profile of the server: {work / 'smtp.prof'}")
    check = "equal" if on_disk == total else f"MISMATCH: {on_disk} files for {total} acknowledged"
    return [Row(f"(a) SMTP 4 KiB, {args.smtp_clients} clients, durable", "msg/s", max(rates), max(reference_rates),
                "aiosmtpd+fsync", target=">=1,000",
                note=f"disk: {disk:,.0f} fsync/s (4 KiB write + fsync, one thread); CPU per 1000 msgs: "
                     f"server {statistics.median(cpu):.2f} s, client {statistics.median(client_cpu):.2f} s; "
                     f"Maildir files {on_disk} vs {total} acknowledged: {check}")]


# -- (b) a realistic Maildir --------------------------------------------------------

FIRST = ("Anna Ben Chloé Dmitri Elena Farid Grace Hiro Ines Jonas Kemal Lea Marco Nadia Olaf Priya Quentin "
         "Rosa Sven Tomás Uma Viktor Wen Xavier Yara Zoë").split()
LAST = ("Adams Becker Costa Dubois Eriksen Fischer García Hansen Ivanova Jensen Kowalski López Müller Nakamura "
        "Olsen Petrov Quinn Rossi Schmidt Tanaka Underwood Virtanen Weber Xu Yilmaz Zimmermann").split()
DOMAINS = ("example.com example.org example.net mail.example lists.example.org corp.example "
           "university.example shop.example").split()
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have "
         "an had they you were their one all we can her has there been if more when will would who so no "
         "report meeting budget schedule project release server invoice agenda draft review update quarter "
         "network backup deploy ticket customer order shipping account password reminder holiday travel "
         "conference minutes proposal contract design feedback weekly summary results figures question "
         "answer tomorrow monday friday office lunch coffee build test failure success migration").split()
TOPICS = ("Quarterly report", "Meeting notes", "Re: Budget for next year", "Invoice", "Your order has shipped",
          "Weekly summary", "Fwd: Conference agenda", "Release plan", "Server maintenance tonight",
          "Lunch on Friday?", "Re: Re: Design review", "Password reminder", "Holiday schedule",
          "Contract draft", "Build failed", "Migration update", "Question about the project",
          "Travel plans", "Feedback on the proposal", "Ticket closed")
ZONES = [timezone(timedelta(hours=h, minutes=m)) for h, m in ((0, 0), (1, 0), (2, 0), (-5, 0), (-8, 0),
                                                              (5, 30), (9, 0), (10, 0))]
RARE_WORD = "zephyrine"  # in about 2 % of bodies: the BODY search
SEARCH_SUBJECT = "Invoice"


def _encoded_word(text: str) -> str:
    import base64
    return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def _paragraphs(rng: random.Random, size: int, rare: bool) -> str:
    lines, total = [], 0
    while total < size:
        words = rng.choices(WORDS, k=rng.randint(8, 13))
        if rare and not lines:
            words[rng.randrange(len(words))] = RARE_WORD
        line = " ".join(words).capitalize() + "."
        lines.append(line)
        total += len(line) + 1
        if rng.random() < 0.15:
            lines.append("")
    return "\n".join(lines) + "\n"


def make_message(rng: random.Random, senders: list[tuple[str, str]], number: int,
                 when: datetime) -> bytes:
    name, address = senders[rng.randrange(len(senders))]
    display = _encoded_word(name) if not name.isascii() else f'"{name}"' if rng.random() < 0.3 else name
    rcpt_name, rcpt = senders[rng.randrange(len(senders))]
    subject = rng.choice(TOPICS) + f" #{rng.randint(1, 9999)}"
    if rng.random() < 0.1:
        subject = _encoded_word(subject + " — ñ")
    headers = [f"Return-Path: <{address}>",
               f"Received: from mx.{address.split('@')[1]} by mail.bench.example; "
               f"{email.utils.format_datetime(when)}",
               f"From: {display} <{address}>", f"To: {rcpt_name} <{rcpt}>"]
    if rng.random() < 0.3:
        headers.append("Cc: " + ", ".join(f"{n} <{a}>" for n, a in rng.sample(senders, rng.randint(1, 3))))
    headers += [f"Subject: {subject}", f"Date: {email.utils.format_datetime(when)}",
                f"Message-ID: <{number}.{rng.getrandbits(48):x}@{address.split('@')[1]}>"]
    if rng.random() < 0.3:
        headers.append(f"In-Reply-To: <{rng.randrange(number + 1)}.{rng.getrandbits(48):x}@example.com>")
    headers.append("MIME-Version: 1.0")
    rare = rng.random() < 0.02
    text = _paragraphs(rng, int(rng.lognormvariate(7.8, 0.7)), rare)
    kind = rng.random()
    if kind < 0.7:
        headers.append("Content-Type: text/plain; charset=utf-8")
        headers.append("Content-Transfer-Encoding: 8bit")
        body = text
    else:
        boundary = f"=_bench_{rng.getrandbits(64):016x}"
        html = "<html><body>" + "".join(f"<p>{p}</p>" for p in text.split("\n") if p) + "</body></html>\n"
        alternative = (f"Content-Type: text/plain; charset=utf-8\n\n{text}\n--{boundary}\n"
                       f"Content-Type: text/html; charset=utf-8\n\n{html}")
        if kind < 0.9:
            headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
            body = f"This is a multi-part message in MIME format.\n\n--{boundary}\n{alternative}\n--{boundary}--\n"
        else:
            import base64
            inner = f"=_alt_{rng.getrandbits(64):016x}"
            blob = base64.encodebytes(rng.randbytes(rng.randint(5_000, 60_000))).decode()
            headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
            body = (f"--{boundary}\nContent-Type: multipart/alternative; boundary=\"{inner}\"\n\n"
                    f"--{inner}\n{alternative.replace(boundary, inner)}\n--{inner}--\n\n"
                    f"--{boundary}\nContent-Type: application/pdf; name=\"report-{number}.pdf\"\n"
                    f"Content-Disposition: attachment; filename=\"report-{number}.pdf\"\n"
                    f"Content-Transfer-Encoding: base64\n\n{blob}\n--{boundary}--\n")
    return ("\n".join(headers) + "\n\n" + body).encode()


def make_maildir(root: Path, count: int, seed: int = 7) -> dict[str, object]:
    """``count`` messages as a Maildir at ``root`` (INBOX), as an MTA and a mail client
    would have left them: the newest third unread in new/, the rest read in cur/ (some
    flagged or answered). Each file's mtime is its Date (the INTERNALDATE on both
    servers). Returns what the searches should look for."""
    rng = random.Random(seed)
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    senders = []
    for _ in range(300):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        local = f"{first}.{last}".lower().encode("ascii", "ignore").decode()
        senders.append((f"{first} {last}", f"{local}@{rng.choice(DOMAINS)}"))
    end = datetime(2026, 10, 1, tzinfo=timezone.utc)
    start = end - timedelta(days=730)
    dates = sorted(start + timedelta(seconds=rng.randrange(730 * 86400)) for _ in range(count))
    for number, when in enumerate(dates):
        when = when.astimezone(rng.choice(ZONES))
        raw = make_message(rng, senders, number, when)
        base = f"{int(when.timestamp())}.M{number:06d}P4242Q{number}.benchgen,S={len(raw)}"
        if number >= count * 2 // 3:
            name = f"new/{base}"
        else:
            flags = "S"
            if rng.random() < 0.05:
                flags = "FS"
            elif rng.random() < 0.1:
                flags = "RS"
            name = f"cur/{base}:2,{flags}"
        path = root / name
        path.write_bytes(raw)
        os.utime(path, (when.timestamp(), when.timestamp()))
    since = dates[count * 9 // 10]
    return {"from": senders[7][1].split("@")[0], "since": since.strftime("%d-%b-%Y")}


# -- (b) IMAP -----------------------------------------------------------------------


class IMAPClient:
    """A minimal IMAP client: sends a command, reads until its tagged reply into one
    buffer. It parses nothing, so that the server is what gets timed."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.number = 0
        greeting = self.sock.recv(65536)
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"IMAP greeting: {greeting!r}")

    def command(self, text: str) -> tuple[float, bytes]:
        """Seconds until the tagged OK, and the whole response."""
        self.number += 1
        tag = b"B%05d" % self.number
        marker = b"\r\n" + tag + b" "
        data = bytearray(b"\r\n")  # so that the marker also matches a tagged reply at once
        started = time.perf_counter()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        search_from = 0
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"IMAP {text}: connection closed")
            data += chunk
            found = data.find(marker, search_from)
            if found >= 0 and data.endswith(b"\r\n"):
                break
            search_from = max(0, len(data) - len(marker)) if found < 0 else found
        elapsed = time.perf_counter() - started
        status = bytes(data[found + len(marker):found + len(marker) + 2])
        if status != b"OK":
            raise RuntimeError(f"IMAP {text}: {bytes(data[found:found + 200])!r}")
        return elapsed, bytes(data[2:])

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (OSError, RuntimeError):
            pass
        self.sock.close()


def search_count(response: bytes) -> int:
    match = re.search(rb"\* SEARCH([ 0-9]*)\r\n", response)
    return len(match.group(1).split()) if match else -1


def fetch_count(response: bytes) -> int:
    return len(re.findall(rb"\r\n\* \d+ FETCH ", b"\r\n" + response))


def bench_imap(work: Path, args: argparse.Namespace) -> list[Row]:
    ensure_dovecot()
    count = args.mailbox
    user, password = "reader", "pw-" + secrets.token_hex(8)
    source = work / "maildir-source"
    print(f"(b) IMAP: making {count:,} messages ...", flush=True)
    started = time.perf_counter()
    terms = make_maildir(source, count)
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    print(f"    {size / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s", flush=True)
    uid, gid, made_user = ensure_mail_user()
    dovecot_root = work / "dovecot-mail"
    shutil.copytree(source, dovecot_root / user)
    for path in [dovecot_root, *(dovecot_root.rglob("*"))]:
        os.chown(path, uid, gid)
    agora = Agora(work / "imap-data", profile=work / "imap.prof" if args.profile else None)
    dovecot = Dovecot(work, dovecot_root, password, uid, gid)
    commands = [("FETCH 1:* (FLAGS ENVELOPE)", "FETCH 1:* (FLAGS ENVELOPE)", fetch_count, ">=0.5x"),
                ("UID SEARCH UNSEEN", "UID SEARCH UNSEEN", search_count, ">=0.5x"),
                (f'UID SEARCH FROM "{terms["from"]}"', f'UID SEARCH FROM "{terms["from"]}"', search_count, ">=0.5x"),
                (f"UID SEARCH SINCE {terms['since']}", f"UID SEARCH SINCE {terms['since']}", search_count,
                 ">=0.5x"),
                (f'UID SEARCH SUBJECT "{SEARCH_SUBJECT}"', f'UID SEARCH SUBJECT "{SEARCH_SUBJECT}"', search_count,
                 ""),
                (f'UID SEARCH BODY "{RARE_WORD}"', f'UID SEARCH BODY "{RARE_WORD}"', search_count, "")]
    rows: list[Row] = []
    clients: dict[str, IMAPClient] = {}
    try:
        agora.start()
        agora.add_user(user, password)
        shutil.copytree(source, agora.maildir(user), dirs_exist_ok=True)
        dovecot.start()
        print(f"    agora {agora.ports['imap']}, dovecot {dovecot.port}; first SELECT ...", flush=True)
        first: dict[str, float] = {}
        for name, port in (("agora", agora.ports["imap"]), ("dovecot", dovecot.port)):
            client = IMAPClient(port)
            client.command(f"LOGIN {user} {password}")
            first[name], response = client.command("SELECT INBOX")
            exists = re.search(rb"\* (\d+) EXISTS", response)
            if not exists or int(exists.group(1)) != count:
                raise RuntimeError(f"{name}: SELECT INBOX says {exists and exists.group(0)!r}, not {count}")
            clients[name] = client
        agora_rss = rss_kib(agora.proc.pid)
        rows.append(Row(f"(b) first SELECT of {count:,} new messages", "s", first["agora"], first["dovecot"],
                        "Dovecot", lower_better=True, note="both index the Maildir they have not seen"))
        print("    warm-up ...", flush=True)
        counts: dict[str, dict[str, int]] = {"agora": {}, "dovecot": {}}
        cold: dict[str, dict[str, float]] = {"agora": {}, "dovecot": {}}
        for name, client in clients.items():
            for label, text, counter, _ in commands:
                cold[name][label], response = client.command(text)
                counts[name][label] = counter(response)
        for label, text, counter, target in commands:
            print(f"    {label} ...", flush=True)
            times: dict[str, list[float]] = {"agora": [], "dovecot": []}
            # A command answered in a few milliseconds is run more often (the same number
            # of times on both servers): its best of three is mostly scheduling noise.
            for round_number in range(args.rounds * QUICK_REPEAT):
                if round_number == args.rounds and max(min(t) for t in times.values()) >= QUICK:
                    break
                for name, client in clients.items():
                    times[name].append(client.command(text)[0])
            agreed = counts["agora"][label] == counts["dovecot"][label]
            found = counts["agora"][label]
            what = "messages" if label.startswith("FETCH") else "hits"
            note = (f"{found:,} {what} on both" if agreed else
                    f"DIFFERENT answers: Agora {found:,}, Dovecot {counts['dovecot'][label]:,} {what}")
            note += (f"; first run after SELECT: Agora {fmt(cold['agora'][label], 's')}, "
                     f"Dovecot {fmt(cold['dovecot'][label], 's')}")
            rows.append(Row(f"(b) {label}", "s", min(times["agora"]), min(times["dovecot"]), "Dovecot",
                            target=target, note=note, lower_better=True))
        rows.append(Row("(b) Agora's RSS with the mailbox selected", "KiB", agora_rss))
    finally:
        for client in clients.values():
            client.close()
        dovecot.stop()
        agora.stop()
        if made_user:
            remove_mail_user()
    if args.profile:
        print(f"    profile of the server: {work / 'imap.prof'}")
    return rows


# -- (c) IDLE -----------------------------------------------------------------------


async def imap_line_until(reader: asyncio.StreamReader, prefix: bytes) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("IMAP server closed the connection")
        if line.startswith(prefix):
            return line


async def idle_client(port: int, user: str, password: str, gate: asyncio.Semaphore,
                      idling: list[int], seen: list[float], failures: list[str],
                      done: asyncio.Event, total: int, sockets: list) -> None:
    try:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sockets.append(writer)
            greeting = await reader.readline()
            if not greeting.startswith(b"* OK"):
                raise ConnectionError(greeting.decode(errors="replace").strip())
            writer.write(f"a LOGIN {user} {password}\r\n".encode())
            line = await imap_line_until(reader, b"a ")
            if not line.startswith(b"a OK"):
                raise ConnectionError(line.decode(errors="replace").strip())
            writer.write(b"b SELECT INBOX\r\n")
            line = await imap_line_until(reader, b"b ")
            if not line.startswith(b"b OK"):
                raise ConnectionError(line.decode(errors="replace").strip())
            writer.write(b"c IDLE\r\n")
            await imap_line_until(reader, b"+")
        idling[0] += 1
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed while idling")
            if line.endswith(b" EXISTS\r\n"):
                seen.append(time.perf_counter())
                if len(seen) == total:
                    done.set()
                return
    except (OSError, ConnectionError) as error:
        failures.append(str(error) or type(error).__name__)
        if len(seen) + len(failures) >= total:
            done.set()


async def deliver_one(port: int, recipient: str) -> tuple[float, float]:
    """The moment the end of DATA was sent, and the moment its 250 came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await smtp_reply(reader)
        writer.write(b"EHLO idle.bench.example\r\n")
        await smtp_reply(reader)
        for command in (b"MAIL FROM:<idle@bench.example>\r\n", b"RCPT TO:<%s>\r\n" % recipient.encode(),
                        b"DATA\r\n"):
            writer.write(command)
            await smtp_reply(reader)
        writer.write(smtp_message(0, 0, recipient, SMTP_SIZE))
        sent = time.perf_counter()
        code, text = await smtp_reply(reader)
        acked = time.perf_counter()
        if code != 250:
            raise RuntimeError(f"delivery for the IDLE clients: {text!r}")
        writer.write(b"QUIT\r\n")
        return sent, acked
    finally:
        writer.close()


async def idle_run(agora: Agora, clients: int, user: str, password: str) -> dict[str, float]:
    port = agora.ports["imap"]
    gate = asyncio.Semaphore(200)  # handshakes at once: below the listen backlog
    seen: list[float] = []
    failures: list[str] = []
    sockets: list = []
    done = asyncio.Event()
    idling = [0]
    started = time.perf_counter()
    tasks = [asyncio.create_task(idle_client(port, user, password, gate, idling, seen, failures, done,
                                             clients, sockets)) for _ in range(clients)]
    while idling[0] + len(failures) < clients:
        await asyncio.sleep(0.05)
    setup = time.perf_counter() - started
    if failures:
        print(f"    {len(failures)} clients failed, e.g. {failures[0]}", flush=True)
    await asyncio.sleep(1.0)  # let the server settle after the ramp
    rss_after = rss_kib(agora.proc.pid)
    sent, acked = await deliver_one(agora.ports["smtp"], f"{user}@localhost")
    try:
        await asyncio.wait_for(done.wait(), 120)
    except TimeoutError:
        pass
    result = {"setup": setup, "rss_after": rss_after, "failures": len(failures), "seen": len(seen),
              "acked_after": acked - sent}
    if seen:
        seen.sort()
        result.update(first=seen[0] - sent, median=seen[len(seen) // 2] - sent, last=seen[-1] - sent)
    for writer in sockets:
        writer.transport.abort()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


def bench_idle(work: Path, args: argparse.Namespace) -> list[Row]:
    clients = args.idle_clients
    raise_nofile(2 * clients + 1000)
    print(f"(c) IDLE: {clients:,} connections ...", flush=True)
    agora = Agora(work / "idle-data", profile=work / "idle.prof" if args.profile else None,
                  extra=["--mail-max-connections", str(max(10000, clients + 100))])
    user, password = "idler", "pw-" + secrets.token_hex(8)
    try:
        agora.start()
        agora.add_user(user, password)
        # Warm the code paths (and the user's Maildir) with one session before measuring.
        client = IMAPClient(agora.ports["imap"])
        client.command(f"LOGIN {user} {password}")
        client.command("SELECT INBOX")
        client.close()
        time.sleep(0.5)
        rss_before = rss_kib(agora.proc.pid)
        result = asyncio.run(idle_run(agora, clients, user, password))
        rss_idle = result["rss_after"]
    finally:
        agora.stop()
    if args.profile:
        print(f"    profile of the server: {work / 'idle.prof'}")
    held = clients - result["failures"]
    per = (rss_idle - rss_before) / held if held else None
    rows = [Row(f"(c) {clients:,} clients LOGIN+SELECT+IDLE, set-up", "s", result["setup"],
                note=f"{held:,} held, {result['failures']} failed; 200 handshakes at a time; cheap argon2id "
                     "(t=1, 1 MiB)"),
            Row("(c) end of DATA -> EXISTS at the last IDLE client", "s", result.get("last"),
                note=f"{result['seen']:,} of {held:,} saw it; first {fmt(result.get('first'), 's')}, "
                     f"median {fmt(result.get('median'), 's')}; the 250 came after "
                     f"{fmt(result['acked_after'], 's')}"),
            Row("(c) server RSS before the clients", "KiB", rss_before),
            Row(f"(c) server RSS with {held:,} IDLE clients", "KiB", rss_idle),
            Row("(c) memory per IDLE connection", "KiB", per)]
    return rows


# -- the run ------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--reference-smtp":
        serve_reference_smtp(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", default="all", choices=("smtp", "imap", "idle", "all"))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement (the best counts)")
    parser.add_argument("--smtp-clients", type=int, default=SMTP_CLIENTS)
    parser.add_argument("--smtp-messages", type=int, default=SMTP_MESSAGES, help="per client and round")
    parser.add_argument("--mailbox", type=int, default=MAILBOX, help="messages in the IMAP mailbox")
    parser.add_argument("--idle-clients", type=int, default=IDLE_CLIENTS)
    parser.add_argument("--profile", action="store_true",
                        help="run each Agora server under cProfile (its event loop thread); slows it down")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.part in ("imap", "all") and os.geteuid() != 0:
        sys.exit("bench: run as root (installs and runs Dovecot)")

    work = Path(tempfile.mkdtemp(prefix="agora-mail-bench-"))
    os.chmod(work, 0o755)
    print("bench servers: argon2id time cost 1, 1 MiB, 1 lane (not the defaults 3, 64 MiB, 4); "
          "mail.max_connections_per_ip 100000; mail.quota 100G", flush=True)
    parts = {"smtp": bench_smtp, "imap": bench_imap, "idle": bench_idle}
    rows: list[Row] = []
    try:
        for name, run in parts.items():
            if args.part in (name, "all"):
                rows += run(work, args)
    finally:
        if args.keep or args.profile:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([{**row.__dict__, "ratio": row.ratio} for row in rows], indent=2))


if __name__ == "__main__":
    main()
