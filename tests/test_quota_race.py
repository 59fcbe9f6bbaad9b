"""Concurrent writers against one small quota: the quota is claimed as bytes arrive, so
uploads over HTTP, WebDAV (PUT and COPY) and FTP together, and deliveries over SMTP and
IMAP APPEND together, never store more than the quota; the refused ones leave nothing.

Files and mail have quotas of their own (users.quota_bytes and mail.quota): each is
raced by its own writers.
"""

from __future__ import annotations

import concurrent.futures
import ftplib
import hashlib
import imaplib
import os
import secrets
import smtplib
import threading
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from conftest import AgoraServer, ServerFactory, create_pg_database
from mail_support import DOMAIN, SERVER_ENV, TIMEOUT, message, module_server

QUOTA = 1_000_000
SIZE = 200_000   # each upload or message: five fit
FIRST = 8 * 1024  # sent before the writers wait for each other, so all are in flight at once
API = "/api/v1/files"


@pytest.fixture(scope="module")
def server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    args = ("--mail-domains", DOMAIN, "--mail-quota", str(QUOTA))
    with module_server(tmp_path_factory, backend, "quota", args) as server:
        yield server


def new_user(server: AgoraServer) -> tuple[str, str]:
    name, password = "q" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    with server.admin() as admin:
        response = admin.post("/api/v1/users", json={"name": name, "password": password, "quota_bytes": QUOTA})
    assert response.status_code == 201, response.text
    return name, password


class Gate:
    """Holds every writer after its first bytes until all have sent theirs."""

    def __init__(self, parties: int):
        self.barrier = threading.Barrier(parties, timeout=60)

    def body(self, data: bytes) -> Iterator[bytes]:
        yield data[:FIRST]
        self.barrier.wait()
        yield data[FIRST:]

    def reader(self, data: bytes):
        gate = self

        class Reader:
            def __init__(self) -> None:
                self.position = 0

            def read(self, size: int = -1) -> bytes:
                if self.position == FIRST:
                    gate.barrier.wait()
                end = len(data) if size < 0 else self.position + size
                if self.position < FIRST:
                    end = min(end, FIRST)
                piece = data[self.position:end]
                self.position += len(piece)
                return piece

        return Reader()

    def abandon(self) -> None:
        self.barrier.abort()


def http_put(server: AgoraServer, token: str, gate: Gate, path: str, data: bytes) -> bool:
    with server.client(token) as http:
        response = http.put(f"{API}/content{path}", content=gate.body(data))
    assert response.status_code in (201, 413), response.text
    return response.status_code == 201


def dav_put(server: AgoraServer, auth: tuple[str, str], gate: Gate, path: str, data: bytes) -> bool:
    with httpx.Client(base_url=server.url + "/dav", auth=auth, timeout=60) as dav:
        response = dav.put(path, content=gate.body(data))
    assert response.status_code in (201, 507), response.text
    return response.status_code == 201


def ftp_stor(client: ftplib.FTP, gate: Gate, path: str, data: bytes) -> bool:
    try:
        try:
            try:
                client.storbinary(f"STOR {path.lstrip('/')}", gate.reader(data), blocksize=16 * 1024)
            except ConnectionError:
                # Refused mid-transfer: the server drops the data connection, then answers.
                client.voidresp()
        except ftplib.error_perm as error:
            assert str(error).startswith("552"), error
            return False
        return True
    finally:
        client.close()


def dav_copy(server: AgoraServer, auth: tuple[str, str], gate: Gate, path: str) -> bool:
    gate.barrier.wait()
    with httpx.Client(base_url=server.url + "/dav", auth=auth, timeout=60) as dav:
        response = dav.request("COPY", "/source.bin", headers={"Destination": server.url + "/dav" + path})
    assert response.status_code in (201, 507), response.text
    return response.status_code == 201


def run_all(jobs: list[Callable[[], bool]], gate: Gate) -> list[bool]:
    def guarded(job: Callable[[], bool]) -> bool:
        try:
            return job()
        except threading.BrokenBarrierError:
            raise
        except BaseException:
            gate.abandon()  # the others stop waiting for this one
            raise

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(guarded, job) for job in jobs]
        concurrent.futures.wait(futures, timeout=120)
    for future in futures:  # the first real failure, not a broken barrier it caused
        error = future.exception(0)
        if error is not None and not isinstance(error, threading.BrokenBarrierError):
            raise error
    return [future.result(0) for future in futures]


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("writers", [8, 32])
def test_concurrent_uploads_never_pass_the_files_quota(server: AgoraServer, writers: int):
    name, password = new_user(server)
    token = server.login(name, password)
    source = os.urandom(SIZE)
    with server.client(token) as http:
        assert http.put(f"{API}/content/source.bin", content=source).status_code == 201
    kinds = ["http", "dav", "ftp", "copy"]
    paths = [f"/{kinds[n % 4]}-{n}.bin" for n in range(writers)]
    datas = {path: os.urandom(SIZE) for path in paths if not path.startswith("/copy")}
    # COPY has no body to hold: it waits at the gate while the others' first bytes are in.
    gate = Gate(writers)
    # Logins one by one (parallel logins of one user are the limiter's business); WebDAV
    # remembers a checked password.
    with httpx.Client(base_url=server.url + "/dav", auth=(name, password), timeout=60) as dav:
        assert dav.request("PROPFIND", "/", headers={"Depth": "0"}).status_code == 207
    jobs: list[Callable[[], bool]] = []
    for path in paths:
        kind = path[1:].split("-")[0]
        if kind == "http":
            jobs.append(lambda p=path: http_put(server, token, gate, p, datas[p]))
        elif kind == "dav":
            jobs.append(lambda p=path: dav_put(server, (name, password), gate, p, datas[p]))
        elif kind == "ftp":
            client = ftplib.FTP()
            client.connect("127.0.0.1", server.ports["ftp"], timeout=60)
            client.login(name, password)
            jobs.append(lambda p=path, client=client: ftp_stor(client, gate, p, datas[p]))
        else:
            jobs.append(lambda p=path: dav_copy(server, (name, password), gate, p))
    stored = run_all(jobs, gate)

    tree = server.data_dir / "files" / name
    assert tree_size(tree) <= QUOTA
    assert any(stored) and not all(stored)
    for path, acknowledged in zip(paths, stored):
        on_disk = tree / path.lstrip("/")
        if acknowledged:
            expected = datas.get(path, source)
            assert hashlib.sha256(on_disk.read_bytes()).digest() == hashlib.sha256(expected).digest(), path
        else:
            assert not on_disk.exists(), path
    uploads = server.data_dir / "files" / ".uploads"
    assert [p.name for p in uploads.glob(f"{name}.*")] == []
    with server.client(token) as http:
        assert http.get(f"{API}/usage").json()["used"] == tree_size(tree)


def body(size: int) -> bytes:
    text = os.urandom(size // 2).hex()
    return "".join(text[i:i + 76] + "\r\n" for i in range(0, len(text), 76)).encode()


def smtp_deliver(server: AgoraServer, name: str, gate: Gate, raw: bytes) -> bool:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as client:
        gate.barrier.wait()
        try:
            client.sendmail("sender@elsewhere.example", [f"{name}@{DOMAIN}"], raw)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as error:
            assert "452" in str(error), error
            return False
    return True


def imap_append(client: imaplib.IMAP4, gate: Gate, raw: bytes) -> bool:
    try:
        gate.barrier.wait()
        typ, data = client.append("INBOX", None, None, raw)
        if typ == "NO":
            assert b"[OVERQUOTA]" in data[0], data
            return False
        assert typ == "OK", data
        return True
    finally:
        client.logout()


@pytest.mark.parametrize("writers", [8, 32])
def test_concurrent_deliveries_never_pass_the_mail_quota(server: AgoraServer, writers: int):
    name, password = new_user(server)
    gate = Gate(writers)
    raws = [message(f"m{n}", body(SIZE)) for n in range(writers)]
    jobs: list[Callable[[], bool]] = []
    for n, raw in enumerate(raws):
        if n % 2:
            jobs.append(lambda raw=raw: smtp_deliver(server, name, gate, raw))
        else:
            # Logged in one by one: parallel logins of one user are the limiter's business.
            client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=60)
            client.login(name, password)
            jobs.append(lambda raw=raw, client=client: imap_append(client, gate, raw))
    stored = run_all(jobs, gate)
    assert any(stored) and not all(stored)

    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=TIMEOUT)
    try:
        client.login(name, password)
        typ, data = client.select("INBOX")
        count = int(data[0])
        sizes = []
        if count:
            typ, data = client.fetch("1:*", "(RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            subjects = []
            for part in data:
                if isinstance(part, tuple):
                    sizes.append(int(part[0].split(b"RFC822.SIZE ")[1].split()[0].rstrip(b")")))
                    subjects.append(part[1].decode().split(":", 1)[1].strip())
            assert sorted(subjects) == sorted(f"m{n}" for n, ok in enumerate(stored) if ok)
        assert count == sum(stored)
        assert sum(sizes) <= QUOTA
    finally:
        client.logout()
    maildir = server.data_dir / "mail" / name
    assert tree_size(maildir) <= QUOTA
    assert [p.name for p in maildir.rglob("tmp/*")] == []


def test_two_nodes_never_pass_the_mail_quota_together(tmp_path_factory, backend):
    """Each node claims room in its own process; the commit, where every node's
    messages meet, is what holds the quota between nodes."""
    if backend != "postgresql":
        pytest.skip("several nodes need the PostgreSQL backend (SQLite is one node's own file)")
    factory = ServerFactory(tmp_path_factory.mktemp("quota-nodes"), backend)
    try:
        url = create_pg_database()
        factory.databases.append(url)
        env = {**SERVER_ENV, "AGORA_MAIL_DOMAINS": DOMAIN, "AGORA_MAIL_QUOTA": str(QUOTA)}
        nodes = [factory(start=False, database_url=url, env=env) for _ in range(2)]
        nodes[0].start()  # migrates
        nodes[1].start()
        name, password = new_user(nodes[0])
        writers = 8  # 1.6 MB in all: four would fit each node's own view
        gate = Gate(writers)
        raws = [message(f"m{n}", body(SIZE)) for n in range(writers)]
        stored = run_all([lambda n=n: smtp_deliver(nodes[n % 2], name, gate, raws[n]) for n in range(writers)], gate)
        assert any(stored) and not all(stored)
        with nodes[1].client(nodes[1].login(name, password)) as http:
            used = http.get("/api/v1/mail/quota").json()["used"]
        assert sum(len(raw) for raw, ok in zip(raws, stored) if ok) <= used <= QUOTA
    finally:
        factory.close()
