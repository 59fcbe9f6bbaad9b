"""Stock mail clients against `agora serve`: fetchmail over POP3 (STLS), POP3S and IMAP
(STARTTLS), and mutt over IMAP and POP3, with TLS each time. Mail goes in with smtplib;
what the clients write out is compared with what was sent."""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import poplib
import secrets
import shutil
import smtplib
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import AgoraServer, ServerFactory

TIMEOUT = 15
DOMAIN = "a.test"
SERVER_ENV = {"AGORA_IDENTITY_ARGON2_TIME_COST": "1", "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024"}
SERVER_ARGS = ("--mail-domains", f"{DOMAIN},localhost")


@pytest.fixture(scope="module")
def mail_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"clients-{backend}"), backend)
    try:
        yield factory(env=SERVER_ENV, args=SERVER_ARGS)
    finally:
        factory.close()


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (Debian package {program}; scripts/test-env.sh installs it)")
    return path


def send(server: AgoraServer, name: str, count: int) -> list[bytes]:
    """``count`` messages by SMTP; a leading dot and 8-bit text in each."""
    sent = []
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=TIMEOUT) as client:
        for i in range(count):
            raw = (f"From: Sender <sender@elsewhere.example>\r\nTo: {name}@{DOMAIN}\r\n"
                   f"Subject: client test {i}\r\nMessage-ID: <{secrets.token_hex(8)}@elsewhere.example>\r\n"
                   "Date: Tue, 2 Jan 2024 09:30:00 +0000\r\nMIME-Version: 1.0\r\n"
                   "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                   f"Message {i}.\r\n.a line with a leading dot\r\nGrüße\r\n").encode()
            client.sendmail("sender@elsewhere.example", [f"{name}@{DOMAIN}"], raw)
            sent.append(raw)
    return sent


def message_id(raw: bytes) -> str:
    return email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"]


def as_lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def pop_count(server: AgoraServer, user: tuple[str, str]) -> int:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=TIMEOUT)
    client.user(user[0])
    client.pass_(user[1])
    count = client.stat()[0]
    client.quit()
    return count


# -- fetchmail --------------------------------------------------------------------------


def run_fetchmail(home: Path, polls: str) -> subprocess.CompletedProcess[str]:
    rc = home / "fetchmailrc"
    rc.write_text("set no syslog\nset no bouncemail\n" + polls)
    rc.chmod(0o600)  # fetchmail refuses a readable one: it holds passwords
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    return subprocess.run(
        [require("fetchmail"), "-f", str(rc), "-i", str(home / "ids"), "--pidfile", str(home / "pid"),
         "--nodetach", "-v"], capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def poll(port: int, protocol: str, user: tuple[str, str], tls: str, out: Path, keep: bool = True) -> str:
    out.mkdir(exist_ok=True)
    # One file per message; $$ is the delivering shell's PID, new for every message.
    mda = f"/bin/sh -c 'cat > {out}/$$.eml'"
    return (f"poll 127.0.0.1 service {port} protocol {protocol} auth password\n"
            f'  user "{user[0]}" there with password "{user[1]}" is "{user[0]}" here\n'
            f"  {tls} no sslcertck {'keep' if keep else 'no keep'} fetchall\n"
            f'  mda "{mda}"\n')


def fetched(out: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(out.glob("*.eml"))]


def test_fetchmail_over_pop3_pop3s_and_imap(mail_server, tmp_path):
    require("fetchmail")
    user = mail_server.create_user()
    sent = send(mail_server, user[0], 3)
    ports = mail_server.ports
    polls = (poll(ports["pop3"], "POP3", user, "sslproto 'TLS1.2+'", tmp_path / "pop3")   # STLS, required
             + poll(ports["pop3s"], "POP3", user, "ssl", tmp_path / "pop3s")
             + poll(ports["imap"], "IMAP", user, "sslproto 'TLS1.2+'", tmp_path / "imap"))  # STARTTLS
    result = run_fetchmail(tmp_path, polls)
    assert result.returncode == 0, result.stdout + result.stderr
    log = result.stdout + result.stderr
    assert "POP3> STLS" in log and "STARTTLS" in log
    for folder in ("pop3", "pop3s", "imap"):
        got = fetched(tmp_path / folder)
        assert sorted(message_id(raw) for raw in got) == sorted(message_id(raw) for raw in sent), folder
        # fetchmail writes LF line ends and adds a Received header of its own at the top.
        for raw in sent:
            [copy] = [g for g in got if message_id(g) == message_id(raw)]
            assert copy.endswith(as_lf(raw)), folder
    assert pop_count(mail_server, user) == 3  # "keep"
    # Without "keep", fetchmail deletes what it fetched: through POP3's DELE and QUIT.
    (tmp_path / "ids").unlink(missing_ok=True)
    result = run_fetchmail(tmp_path, poll(ports["pop3"], "POP3", user, "sslproto 'TLS1.2+'",
                                          tmp_path / "again", keep=False))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "POP3> DELE 3" in result.stdout + result.stderr
    assert len(fetched(tmp_path / "again")) == 3
    assert pop_count(mail_server, user) == 0
    client = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=TIMEOUT)
    client.login(*user)
    assert client.select("INBOX")[1] == [b"0"]
    client.logout()


# -- mutt -------------------------------------------------------------------------------


MUTT_SETTINGS = """\
set confirmcreate = no
set confirmappend = no
set quit = yes
set move = no
set mbox_type = mbox
set header_cache = ""
set message_cachedir = ""
set record = ""
set sort = date
set ssl_force_tls = yes
set ssl_starttls = yes
set ssl_verify_host = no
set timeout = 10
"""


def run_mutt(home: Path, url: str, settings: str, keys: str) -> subprocess.CompletedProcess[str]:
    """mutt is a full-screen program: it runs under script(1) for a terminal, and
    ``push`` types the keys."""
    rc = home / "muttrc"
    # A folder of its own: without one mutt asks whether to create ~/Mail, and waits.
    rc.write_text(settings + f'set folder = "{home}"\n' + MUTT_SETTINGS)
    command = f"mutt -n -F {rc} -f '{url}' -e 'push \"{keys}\"'"
    env = {**os.environ, "HOME": str(home), "TERM": "xterm"}
    try:
        return subprocess.run([require("script"), "-qec", command, "/dev/null"], capture_output=True,
                              text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:  # waiting at some prompt: show the screen
        screen = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout
        pytest.fail(f"mutt did not finish; its screen:\n{screen}")


@pytest.mark.parametrize("protocol", ["imap", "pop"])
def test_mutt_reads_over_imap_and_pop3_with_tls(mail_server, tmp_path, protocol):
    require("mutt")
    user = mail_server.create_user()
    sent = send(mail_server, user[0], 2)
    out = tmp_path / "saved.mbox"
    # The server's own certificate is the one mutt trusts.
    cert = mail_server.data_dir / "tls" / "cert.pem"
    port = mail_server.ports["imap" if protocol == "imap" else "pop3"]
    settings = (f'set certificate_file = "{cert}"\n'
                f'set {protocol}_user = "{user[0]}"\nset {protocol}_pass = "{user[1]}"\n')
    keys = f"<first-entry><copy-message>{out}<enter><last-entry><copy-message>{out}<enter><quit>"
    result = run_mutt(tmp_path, f"{protocol}://{user[0]}@127.0.0.1:{port}/{'INBOX' if protocol == 'imap' else ''}",
                      settings, keys)
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.exists(), result.stdout
    saved = out.read_bytes()
    for raw in sent:
        assert message_id(raw).encode() in saved
        assert as_lf(raw).split(b"\n\n", 1)[1] in saved  # the body, dot-stuffing undone
    assert "TLS" in result.stdout  # mutt reports the TLS connection it made
    assert pop_count(mail_server, user) == 2  # copying deletes nothing
