"""A full disk: writes are refused with each protocol's own answer and leave nothing;
what was acknowledged stays whole; logins and reads go on; after space is freed,
everything works again.

The server's data dir (its SQLite metadata database included) is a small tmpfs made
by the test, so mounting needs root.
"""

from __future__ import annotations

import ftplib
import hashlib
import imaplib
import io
import os
import poplib
import shutil
import smtplib
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from agora.core import fsutil
from agora.core.errors import StorageFull
from agora.files.store import FileStore
from conftest import AgoraServer, ServerFactory
from mail_support import DOMAIN, SERVER_ENV, TIMEOUT, message

# The tests build on each other (what the first acknowledges, the later ones find
# whole), so they run in order on one worker, on one server per backend.
pytestmark = pytest.mark.xdist_group("faults-disk")

SIZE = 6 * 1024 * 1024  # the whole filesystem; SQLite and the server's own files fit in it
API = "/api/v1/files"
CURRENCY = "TDF"


def mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path) -> Path:
    """A file that takes every byte left on ``path``'s filesystem."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        for piece in (chunk, chunk[:4096], chunk[:1]):
            while True:
                try:
                    if out.write(piece) < len(piece):
                        break
                except OSError:
                    break
    return filler


class Disk:
    """The shared server, its user and what was acknowledged so far."""

    def __init__(self, server: AgoraServer, name: str, password: str, token: str, backend: str):
        self.server = server
        self.backend = backend
        self.name = name
        self.password = password
        self.token = token
        self.files: dict[str, str] = {}  # path -> sha256 of what was acknowledged
        self.subjects: list[str] = []    # messages acknowledged in INBOX
        self.share = ""                  # a share link's token to /kept.bin

    @property
    def root(self) -> Path:
        return self.server.data_dir

    def http(self) -> httpx.Client:
        return self.server.client(self.token)

    def dav(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url + "/dav", auth=(self.name, self.password), timeout=30)

    def ftp(self) -> ftplib.FTP:
        client = ftplib.FTP()
        client.connect("127.0.0.1", self.server.ports["ftp"], timeout=TIMEOUT)
        client.login(self.name, self.password)
        return client

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=TIMEOUT)
        client.login(self.name, self.password)
        return client

    def tree(self) -> Path:
        return self.root / "files" / self.name

    def leftovers(self) -> list[str]:
        uploads = self.root / "files" / ".uploads"
        found = [p.name for p in uploads.glob("*.part")] if uploads.exists() else []
        for folder in (self.root / "mail" / self.name).rglob("tmp"):
            found += [p.name for p in folder.iterdir()]
        return found


@pytest.fixture(scope="module")
def disk(tmp_path_factory, backend) -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    if shutil.which("mount") is None:
        pytest.skip("the mount command is not installed")
    base = tmp_path_factory.mktemp(f"disk-{backend}")
    data = base / "server0"
    mount_tmpfs(data, SIZE)
    factory = ServerFactory(base, backend)
    try:
        server = factory(env={**SERVER_ENV, "AGORA_MAIL_DOMAINS": DOMAIN})
        name, password = server.create_user()
        token = server.login(name, password)
        with server.admin() as admin:
            assert admin.post("/api/v1/bank/currencies", json={"code": CURRENCY, "exponent": 2}).status_code == 201
        yield Disk(server, name, password, token, backend)
    finally:
        factory.close()
        subprocess.run(["umount", "-l", str(data)], check=False)


def acknowledge_file(disk: Disk, path: str, data: bytes) -> None:
    with disk.http() as http:
        response = http.put(f"{API}/content{path}", content=data)
    assert response.status_code == 201, response.text
    disk.files[path] = hashlib.sha256(data).hexdigest()


def acknowledge_mail(disk: Disk, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", disk.server.ports["smtp"], timeout=TIMEOUT) as client:
        client.sendmail("sender@elsewhere.example", [f"{disk.name}@{DOMAIN}"], message(subject))
    disk.subjects.append(subject)


def assert_intact(disk: Disk) -> None:
    with disk.http() as http:
        for path, digest in disk.files.items():
            response = http.get(f"{API}/content{path}")
            assert response.status_code == 200, response.text
            assert hashlib.sha256(response.content).hexdigest() == digest, path
    client = disk.imap()
    try:
        assert client.select("INBOX")[0] == "OK"
        typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        subjects = [part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple)]
        assert subjects == disk.subjects
    finally:
        client.logout()


def ftp_refusal(client: ftplib.FTP, name: str, data: bytes) -> str:
    """The reply to a STOR that must be refused."""
    try:
        try:
            client.storbinary(f"STOR {name}", io.BytesIO(data))
        except ConnectionError:
            # Refused mid-transfer: the server drops the data connection, then answers.
            client.voidresp()
    except ftplib.Error as error:
        return str(error)
    raise AssertionError(f"STOR {name} was acknowledged")


def pieces(data: bytes) -> Iterator[bytes]:
    """``data`` sent without a length (chunked)."""
    return (data[i:i + 65536] for i in range(0, len(data), 65536))


def refused_http(disk: Disk, path: str, data: bytes | Iterator[bytes]) -> int:
    """The status of a files-API upload; a connection cut before the answer counts as
    no answer (0)."""
    try:
        with disk.http() as http:
            return http.put(f"{API}/content{path}", content=data).status_code
    except httpx.TransportError:
        return 0


def test_uploads_that_do_not_fit_are_refused_whole(disk: Disk):
    acknowledge_file(disk, "/kept.bin", os.urandom(200_000))
    acknowledge_mail(disk, "before the disk filled")
    with disk.http() as http:
        disk.share = http.post(f"{API}/shares", json={"path": "/kept.bin"}).json()["token"]
    too_big = os.urandom(free_bytes(disk.root) + 512 * 1024)

    assert refused_http(disk, "/api.bin", too_big) == 507  # its length says so up front
    assert refused_http(disk, "/api.bin", pieces(too_big)) == 507  # found as it is written

    with disk.dav() as dav:
        assert dav.put("/dav.bin", content=too_big).status_code == 507
        # Streamed without a length: refused when the disk takes no more.
        assert dav.put("/dav.bin", content=pieces(too_big)).status_code == 507

    client = disk.ftp()
    try:
        assert ftp_refusal(client, "ftp.bin", too_big)[:3] in ("452", "552")
        assert "ftp.bin" not in client.nlst()
    finally:
        client.close()

    names = {p.name for p in disk.tree().iterdir()}
    assert names == {"kept.bin"}
    assert disk.leftovers() == []
    assert_intact(disk)


@pytest.fixture(scope="module")
def full(disk: Disk) -> Iterator[Disk]:
    """The disk with no byte free for the duration of the tests that use it."""
    filler = fill(disk.root)
    assert free_bytes(disk.root) == 0
    try:
        yield disk
    finally:
        filler.unlink()


def test_with_no_byte_free_logins_and_reads_work(full: Disk):
    disk = full
    assert free_bytes(disk.root) == 0
    # IMAP: login, select, fetch.
    assert_intact(disk)
    # POP3
    pop = poplib.POP3("127.0.0.1", disk.server.ports["pop3"], timeout=TIMEOUT)
    try:
        pop.user(disk.name)
        assert pop.pass_(disk.password).startswith(b"+OK")
        count, _ = pop.stat()
        assert count == len(disk.subjects)
        assert any(b"Subject: before the disk filled" == line for line in pop.retr(1)[1])
    finally:
        pop.quit()
    # FTP
    client = disk.ftp()
    try:
        received = io.BytesIO()
        client.retrbinary("RETR kept.bin", received.write)
        assert hashlib.sha256(received.getvalue()).hexdigest() == disk.files["/kept.bin"]
    finally:
        client.quit()
    # WebDAV, with the password
    with disk.dav() as dav:
        listing = dav.request("PROPFIND", "/", headers={"Depth": "1"})
        assert listing.status_code == 207 and b"kept.bin" in listing.content
        assert dav.get("/kept.bin").status_code == 200
    # A share link (it counts its downloads, where it can).
    with disk.server.client() as anonymous:
        shared = anonymous.get(f"/s/{disk.share}")
        assert shared.status_code == 200
        assert hashlib.sha256(shared.content).hexdigest() == disk.files["/kept.bin"]
    # The PostgreSQL port: the password is checked (the hosted database need not exist).
    psycopg = pytest.importorskip("psycopg")
    for password, answer in ((disk.password, 'database "nosuchdb" does not exist'),
                             ("wrong-" + disk.password, "password authentication failed")):
        with pytest.raises(psycopg.OperationalError) as failed:
            psycopg.connect(host="127.0.0.1", port=disk.server.ports["postgres"], user=disk.name,
                            password=password, dbname="nosuchdb", sslmode="disable", connect_timeout=10)
        assert answer in str(failed.value), failed.value


def test_with_no_byte_free_writes_get_each_protocols_answer(full: Disk):
    disk = full
    assert refused_http(disk, "/new.bin", os.urandom(100_000)) == 507
    # Refused at its first chunk, with most of the body still to come: the answer
    # still reaches the client.
    assert refused_http(disk, "/large.bin", os.urandom(32 * 1024 * 1024)) == 507
    with disk.dav() as dav:
        assert dav.put("/new.bin", content=os.urandom(100_000)).status_code == 507
    client = disk.ftp()
    try:
        assert ftp_refusal(client, "new.bin", os.urandom(100_000))[:3] in ("452", "552")
    finally:
        client.close()
    imap = disk.imap()
    try:
        typ, data = imap.append("INBOX", None, None, message("appended to a full disk", os.urandom(30_000).hex().encode()))
        assert typ == "NO" and (b"[OVERQUOTA]" in data[0] or b"[LIMIT]" in data[0]), data
    finally:
        imap.logout()
    with smtplib.SMTP("127.0.0.1", disk.server.ports["smtp"], timeout=TIMEOUT) as smtp:
        with pytest.raises(smtplib.SMTPException) as refused_mail:
            smtp.sendmail("sender@elsewhere.example", [f"{disk.name}@{DOMAIN}"], message("to a full disk"))
    assert "452" in str(refused_mail.value) or "4.3.1" in str(refused_mail.value), refused_mail.value
    # The metadata database: on the full disk with SQLite (a temporary failure), else not.
    with disk.http() as http:
        opened = http.post("/api/v1/bank/accounts", json={"currency": CURRENCY, "name": "full"})
        token = http.post("/api/v1/tokens", json={"username": disk.name, "password": disk.password, "name": "x"})
    expected = 503 if disk.backend == "sqlite" else 201
    assert (opened.status_code, token.status_code) == (expected, expected), (opened.text, token.text)
    assert {p.name for p in disk.tree().iterdir()} == {"kept.bin"}
    assert disk.leftovers() == []


def test_after_space_is_freed_all_is_intact_and_writes_work(full: Disk, request):
    disk = full
    # Free the disk (the fixture would, at the module's end; this test needs it now).
    (disk.root / "filler").unlink()
    try:
        assert_intact(disk)
        acknowledge_file(disk, "/after.bin", os.urandom(300_000))
        with disk.dav() as dav:
            data = os.urandom(100_000)
            assert dav.put("/after-dav.bin", content=data).status_code == 201
            disk.files["/after-dav.bin"] = hashlib.sha256(data).hexdigest()
        acknowledge_mail(disk, "after the disk was freed")
        imap = disk.imap()
        try:
            assert imap.append("INBOX", None, None, message("appended after"))[0] == "OK"
            disk.subjects.append("appended after")
        finally:
            imap.logout()
        assert_intact(disk)
    finally:
        (disk.root / "filler").touch()  # for the fixture's unlink


def test_short_writes_are_completed_or_refused(tmp_path, monkeypatch):
    """write(2) storing fewer bytes than asked: the rest is written, and where the disk
    takes no more, StorageFull; an Upload is then aborted and leaves nothing."""
    real_write = os.write
    room = {"left": 10_000}

    def short_write(fd: int, data) -> int:
        if room["left"] <= 0:
            raise OSError(28, "No space left on device")
        count = min(len(data), 777, room["left"])  # never all of it at once
        room["left"] -= count
        return real_write(fd, bytes(data[:count]))

    monkeypatch.setattr(fsutil.os, "write", short_write)
    data = os.urandom(5_000)
    target = tmp_path / "whole.bin"
    fsutil.write_atomically(target, data)
    assert target.read_bytes() == data

    files = FileStore(tmp_path / "files").for_user("someone", 10**9)
    with pytest.raises(StorageFull):
        with files.upload("/cut.bin") as upload:
            upload.write(os.urandom(8_000))
    assert not files.exists("/cut.bin")
    assert list((tmp_path / "files" / ".uploads").iterdir()) == []
