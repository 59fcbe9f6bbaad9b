"""FTP, explicit and implicit FTPS against a real server, with real clients: ftplib, curl, lftp.

Most tests share one server per backend (each test makes users of its own); settings
that change behaviour for everyone (limits, active mode off) get a second server.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import AgoraServer, ServerFactory, wait_for

TIMEOUT = 15
FTP_ARGS = ("--ftp-port", "0")
# Cheap password hashing: these tests log in a hundred times, and hashing is not their subject.
SERVER_ENV = {"AGORA_IDENTITY_ARGON2_TIME_COST": "1", "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024"}
LIMITS_ENV = {
    **SERVER_ENV,
    "AGORA_FILES_MAX_UPLOAD": "64K",
    "AGORA_FTP_ACTIVE_MODE": "off",
    "AGORA_FTP_IDLE_TIMEOUT": "2",
    "AGORA_FTP_DATA_TIMEOUT": "1",
    "AGORA_FTP_MAX_CONNECTIONS_PER_IP": "3",
    "AGORA_FTP_PASSIVE_PORTS": "30100-30119",
    "AGORA_FTP_MASQUERADE_ADDRESS": "127.0.0.2",
    "AGORA_IDENTITY_LOGIN_FREE_FAILURES": "2",
    "AGORA_IDENTITY_LOGIN_BACKOFF_BASE": "60",
}


@pytest.fixture(scope="module")
def ftp_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"ftp-{backend}"), backend)
    try:
        yield factory(args=FTP_ARGS, env=SERVER_ENV)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory, backend) -> Iterator[AgoraServer]:
    factory = ServerFactory(tmp_path_factory.mktemp(f"ftp-limits-{backend}"), backend)
    try:
        yield factory(args=FTP_ARGS, env=LIMITS_ENV)
    finally:
        factory.close()


@pytest.fixture
def user(ftp_server) -> tuple[str, str]:
    return ftp_server.create_user()


# -- helpers ----------------------------------------------------------------------------


def cert(server: AgoraServer) -> Path:
    return server.data_dir / "tls" / "cert.pem"


def connect(server: AgoraServer, user: str | None = None, password: str | None = None, *,
            tls: bool = False, source: str | None = None) -> ftplib.FTP:
    source_address = (source, 0) if source else None
    if tls:
        context = ssl.create_default_context(cafile=str(cert(server)))
        ftp: ftplib.FTP = ftplib.FTP_TLS(context=context, timeout=TIMEOUT, source_address=source_address)
    else:
        ftp = ftplib.FTP(timeout=TIMEOUT, source_address=source_address)
    ftp.connect("127.0.0.1", server.ports["ftp"])
    if tls:
        ftp.auth()
    if user:
        ftp.login(user, password)
        if tls:
            ftp.prot_p()
    return ftp


def store(ftp: ftplib.FTP, name: str, data: bytes, *, command: str = "STOR", rest: int | None = None) -> str:
    return ftp.storbinary(f"{command} {name}", io.BytesIO(data), rest=rest)


def store_refused(ftp: ftplib.FTP, name: str, data: bytes) -> str:
    """The reply to an upload the server cuts short (it may close the data connection
    while the client is still sending)."""
    try:
        store(ftp, name, data)
    except ftplib.Error as error:
        return str(error)
    except OSError:
        try:
            ftp.getresp()
        except ftplib.Error as error:
            return str(error)
    raise AssertionError("the upload was accepted")


def fetch(ftp: ftplib.FTP, name: str, rest: int | None = None) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", out.write, rest=rest)
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(server: AgoraServer, name: str) -> Path:
    return server.data_dir / "files" / name


def leftovers(server: AgoraServer, name: str) -> list[Path]:
    return list((server.data_dir / "files" / ".uploads").glob(f"{name}.*"))


def refused(ftp: ftplib.FTP, command: str) -> str:
    with pytest.raises(ftplib.error_perm) as info:
        ftp.sendcmd(command)
    return str(info.value)


# -- ftplib: the everyday commands ------------------------------------------------------


def test_login_upload_download_list_rename_delete(ftp_server, user):
    name, password = user
    data = os.urandom(3 * 1024 * 1024 + 17)
    with connect(ftp_server, name, password) as ftp:
        assert ftp.sendcmd("SYST").startswith("215 UNIX")
        features = ftp.sendcmd("FEAT")
        for feature in ("UTF8", "MLST", "REST STREAM", "SIZE", "MDTM", "EPSV", "AUTH TLS", "PBSZ", "PROT"):
            assert feature in features
        assert "MFMT" not in features
        assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
        assert ftp.sendcmd("NOOP").startswith("200")
        assert ftp.sendcmd("TYPE I").startswith("200")
        assert ftp.pwd() == "/"

        assert store(ftp, "data.bin", data).startswith("226")
        assert sha(fetch(ftp, "data.bin")) == sha(data)
        assert ftp.size("data.bin") == len(data)
        assert re.fullmatch(r"213 \d{14}", ftp.sendcmd("MDTM data.bin"))
        # What FTP wrote is what the store holds, byte for byte.
        assert sha((tree(ftp_server, name) / "data.bin").read_bytes()) == sha(data)

        assert ftp.mkd("docs") == "/docs"
        ftp.cwd("docs")
        assert ftp.pwd() == "/docs"
        store(ftp, "notes é.txt", b"hello\n")
        ftp.sendcmd("CDUP")
        assert ftp.pwd() == "/"

        listing: list[str] = []
        ftp.retrlines("LIST", listing.append)
        assert any(line.startswith("d") and line.endswith(" docs") for line in listing)
        assert any(line.startswith("-") and f" {len(data)} " in line and line.endswith(" data.bin")
                   for line in listing)
        facts = dict(ftp.mlsd("/"))
        assert facts["docs"]["type"] == "dir"
        assert facts["data.bin"]["type"] == "file" and facts["data.bin"]["size"] == str(len(data))
        assert sorted(ftp.nlst()) == ["data.bin", "docs"]
        assert ftp.nlst("docs") == ["notes é.txt"]
        assert "type=file;" in ftp.sendcmd("MLST /docs/notes é.txt")

        ftp.rename("data.bin", "docs/moved.bin")
        assert sorted(ftp.nlst("docs")) == ["moved.bin", "notes é.txt"]
        assert sha(fetch(ftp, "/docs/moved.bin")) == sha(data)
        # A file replaces a file, as rename(2) does; nothing replaces a folder.
        ftp.rename("docs/notes é.txt", "docs/moved.bin")
        assert fetch(ftp, "docs/moved.bin") == b"hello\n"
        ftp.mkd("other")
        assert ftp.sendcmd("RNFR docs/moved.bin").startswith("350")
        assert refused(ftp, "RNTO other").startswith("550")

        assert refused(ftp, "RMD docs").startswith("550")  # not empty
        assert refused(ftp, "DELE docs").startswith("550")  # a folder
        ftp.delete("docs/moved.bin")
        ftp.rmd("docs")
        ftp.rmd("other")
        assert ftp.nlst() == []
        assert ftp.quit().startswith("221")
    assert not leftovers(ftp_server, name)


def test_stou_and_active_mode_from_loopback(ftp_server, user):
    name, password = user
    with connect(ftp_server, name, password) as ftp:
        reply = ftp.storbinary("STOU", io.BytesIO(b"unique"))
        assert reply.startswith("226")
        [stored] = ftp.nlst()
        assert fetch(ftp, stored) == b"unique"
        # ftp.active_mode defaults to "loopback": PORT/EPRT work for local clients.
        ftp.set_pasv(False)
        store(ftp, "active.bin", b"x" * 100_000)
        assert fetch(ftp, "active.bin") == b"x" * 100_000


def test_resume_upload_rest_and_appe_and_download(ftp_server, user):
    name, password = user
    data = os.urandom(1_000_000)
    with connect(ftp_server, name, password) as ftp:
        # REST+STOR: the first N bytes of the current version are kept.
        store(ftp, "big.bin", data[:300_000] + b"garbage after the restart point")
        assert store(ftp, "big.bin", data[300_000:], rest=300_000).startswith("226")
        assert sha(fetch(ftp, "big.bin")) == sha(data)
        # APPE: everything current is kept.
        store(ftp, "log.txt", b"one\n")
        store(ftp, "log.txt", b"two\n", command="APPE")
        store(ftp, "fresh.txt", b"new\n", command="APPE")
        assert fetch(ftp, "log.txt") == b"one\ntwo\n"
        assert fetch(ftp, "fresh.txt") == b"new\n"
        # Beyond the end there is nothing to resume.
        ftp.sendcmd("TYPE I")
        ftp.sendcmd("REST 5000")
        with pytest.raises(ftplib.Error, match="^554"):
            ftp.sendcmd("STOR log.txt")
        # REST+RETR: the rest of the file.
        assert fetch(ftp, "big.bin", rest=999_000) == data[999_000:]
        assert fetch(ftp, "big.bin", rest=0) == data
    assert not leftovers(ftp_server, name)


# -- FTPS -------------------------------------------------------------------------------


def test_ftps_with_verified_certificate(ftp_server, user):
    """Explicit FTPS: AUTH TLS, PBSZ 0, PROT P, certificate checked against the data dir's.

    (Plain-text logins from non-loopback addresses are refused by identity unless
    allowed; that cannot be shown on loopback, where this shows the TLS login working.)
    """
    name, password = user
    data = os.urandom(2_000_000)
    with connect(ftp_server, name, password, tls=True) as ftp:
        assert isinstance(ftp.sock, ssl.SSLSocket)
        store(ftp, "secret.bin", data)
        assert sha(fetch(ftp, "secret.bin")) == sha(data)
        assert fetch(ftp, "secret.bin", rest=1_999_000) == data[1_999_000:]
        store(ftp, "secret.bin", b"tail", command="APPE")
        assert ftp.size("secret.bin") == len(data) + 4
        assert [entry for entry, _ in ftp.mlsd()] == ["secret.bin"]
        ftp.set_pasv(False)  # active mode, the server connecting back, in TLS too
        assert fetch(ftp, "secret.bin", rest=len(data)) == b"tail"
        with pytest.raises(ftplib.error_perm, match="^503"):
            ftp.sendcmd("AUTH TLS")  # already
    # A client that does not trust the certificate never gets to send a password.
    untrusting = ftplib.FTP_TLS(context=ssl.create_default_context(), timeout=TIMEOUT)
    untrusting.connect("127.0.0.1", ftp_server.ports["ftp"])
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.auth()
    untrusting.close()


# -- curl -------------------------------------------------------------------------------


def curl(server: AgoraServer, user: str, password: str, tls: bool, path: str, *args: str,
         check: bool = True) -> subprocess.CompletedProcess[bytes]:
    command = ["curl", "-sS", "--max-time", "30", "-u", f"{user}:{password}",
               f"ftp://127.0.0.1:{server.ports['ftp']}/{path}", *args]
    if tls:
        # Explicit FTPS: AUTH TLS on the FTP port (curl's ftps:// would be implicit TLS).
        command += ["--ssl-reqd", "--cacert", str(cert(server))]
    result = subprocess.run(command, capture_output=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_curl(ftp_server, user, tmp_path, tls):
    name, password = user
    data = os.urandom(1_500_000)
    local = tmp_path / "local.bin"
    local.write_bytes(data)

    curl(ftp_server, name, password, tls, "up.bin", "-T", str(local))
    curl(ftp_server, name, password, tls, "up.bin", "-o", str(tmp_path / "down.bin"))
    assert sha((tmp_path / "down.bin").read_bytes()) == sha(data)
    if not tls:  # (curl 7.88 fails to start TLS on a data connection it accepted)
        # Active mode (EPRT), allowed for loopback clients by default.
        curl(ftp_server, name, password, tls, "up.bin", "--ftp-port", "127.0.0.1", "-o", str(tmp_path / "active.bin"))
        assert sha((tmp_path / "active.bin").read_bytes()) == sha(data)
    listing = curl(ftp_server, name, password, tls, "").stdout.decode()
    assert listing.startswith("-rw") and listing.rstrip().endswith("up.bin")
    assert curl(ftp_server, name, password, tls, "", "--list-only").stdout.split() == [b"up.bin"]

    # Resume an upload: the server has the first part; curl asks SIZE and sends the rest.
    with connect(ftp_server, name, password) as ftp:
        store(ftp, "resumed.bin", data[:600_000])
    curl(ftp_server, name, password, tls, "resumed.bin", "-T", str(local), "-C", "-")
    # Resume a download: the local file has the first part; curl sends REST.
    partial = tmp_path / "partial.bin"
    partial.write_bytes(data[:700_000])
    curl(ftp_server, name, password, tls, "resumed.bin", "-C", "-", "-o", str(partial))
    assert sha(partial.read_bytes()) == sha(data)

    curl(ftp_server, name, password, tls, "", "-Q", "RNFR up.bin", "-Q", "RNTO renamed.bin", "--list-only")
    curl(ftp_server, name, password, tls, "", "-Q", "DELE resumed.bin", "-o", os.devnull)
    assert curl(ftp_server, name, password, tls, "", "--list-only").stdout.split() == [b"renamed.bin"]

    denied = curl(ftp_server, name, "wrong-password", tls, "", check=False)
    assert denied.returncode == 67  # CURLE_LOGIN_DENIED


# -- implicit FTPS ----------------------------------------------------------------------


class ImplicitFTP_TLS(ftplib.FTP_TLS):
    """ftplib knows only explicit FTPS: this one starts TLS as soon as it connects."""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        if host:
            self.host = host
        if port:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        sock = socket.create_connection((self.host, self.port), self.timeout, source_address=self.source_address)
        self.af = sock.family
        self.sock = self.context.wrap_socket(sock, server_hostname=self.host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def connect_implicit(server: AgoraServer, user: str, password: str) -> ImplicitFTP_TLS:
    context = ssl.create_default_context(cafile=str(cert(server)))
    ftp = ImplicitFTP_TLS(context=context, timeout=TIMEOUT)
    ftp.connect("127.0.0.1", server.ports["ftps"])
    ftp.login(user, password)
    ftp.prot_p()
    return ftp


def curl_ftps(server: AgoraServer, user: str, password: str, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = ["curl", "-sS", "--max-time", "30", "-u", f"{user}:{password}", "--ssl-reqd",
               "--cacert", str(cert(server)), f"ftps://127.0.0.1:{server.ports['ftps']}/{path}", *args]
    result = subprocess.run(command, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_curl_implicit_ftps(ftp_server, user, tmp_path):
    """curl's ftps:// is implicit FTPS: TLS before the banner, then PBSZ 0 / PROT P."""
    name, password = user
    data = os.urandom(1_500_000)
    local = tmp_path / "local.bin"
    local.write_bytes(data)

    curl_ftps(ftp_server, name, password, "up.bin", "-T", str(local))
    curl_ftps(ftp_server, name, password, "up.bin", "-o", str(tmp_path / "down.bin"))
    assert sha((tmp_path / "down.bin").read_bytes()) == sha(data)
    assert sha(tree(ftp_server, name).joinpath("up.bin").read_bytes()) == sha(data)
    listing = curl_ftps(ftp_server, name, password, "").stdout.decode()
    assert listing.startswith("-rw") and listing.rstrip().endswith("up.bin")

    with connect(ftp_server, name, password) as ftp:
        store(ftp, "resumed.bin", data[:600_000])
    curl_ftps(ftp_server, name, password, "resumed.bin", "-T", str(local), "-C", "-")
    partial = tmp_path / "partial.bin"
    partial.write_bytes(data[:700_000])
    curl_ftps(ftp_server, name, password, "resumed.bin", "-C", "-", "-o", str(partial))
    assert sha(partial.read_bytes()) == sha(data)
    assert sorted(curl_ftps(ftp_server, name, password, "", "--list-only").stdout.split()) == [b"resumed.bin", b"up.bin"]


def test_ftplib_implicit_ftps(ftp_server, user):
    name, password = user
    data = os.urandom(500_000)
    with connect_implicit(ftp_server, name, password) as ftp:
        assert ftp.welcome.startswith("220")
        assert isinstance(ftp.sock, ssl.SSLSocket)
        store(ftp, "secret.bin", data)
        assert sha(fetch(ftp, "secret.bin")) == sha(data)
        assert fetch(ftp, "secret.bin", rest=499_000) == data[499_000:]
        assert [entry for entry, _ in ftp.mlsd()] == ["secret.bin"]
        with pytest.raises(ftplib.error_perm, match="^503"):
            ftp.sendcmd("AUTH TLS")  # already
        with ftp_server.client() as http:
            metrics = http.get("/metrics").text
        count = re.search(r'agora_connections\{listener="ftps"\} (\S+)', metrics)
        assert count and float(count.group(1)) >= 1
    # The same tree as over the explicit listener.
    with connect(ftp_server, name, password, tls=True) as ftp:
        assert sha(fetch(ftp, "secret.bin")) == sha(data)


def test_plain_client_on_the_implicit_port_fails_cleanly(ftp_server, user):
    name, password = user
    port = ftp_server.ports["ftps"]
    # A client speaking FTP in clear: no banner in clear, and the connection is closed
    # (reset, when the server's TLS gave up before reading the whole line).
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"USER " + name.encode() + b"\r\n")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
        assert b"220" not in received
    # One waiting for a banner in clear gets none, and gives up.
    with pytest.raises((TimeoutError, EOFError, ConnectionError)):
        ftplib.FTP("127.0.0.1", timeout=1).connect("127.0.0.1", port)
    # An untrusting TLS client fails its handshake.
    untrusting = ImplicitFTP_TLS(context=ssl.create_default_context(), timeout=TIMEOUT)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.connect("127.0.0.1", port)
    # The server serves others all the same.
    with connect_implicit(ftp_server, name, password) as ftp:
        store(ftp, "after.bin", b"still here")
        assert fetch(ftp, "after.bin") == b"still here"


# -- lftp -------------------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, str]:
    files = {"index.html": b"<h1>hi</h1>", "a/b/c.bin": os.urandom(300_000), "a/empty.txt": b"",
             "a/b/d e.txt": b"spaces", "z.txt": b"z" * 5000}
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    (root / "a" / "empty-dir").mkdir()
    return {relative: sha(content) for relative, content in files.items()}


def digest_tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): sha(path.read_bytes()) for path in root.rglob("*") if path.is_file()}


def lftp(server: AgoraServer, user: str, password: str, commands: str, *, tls: bool) -> None:
    settings = (f"set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file {cert(server)};"
                if tls else "set ftp:ssl-allow false;")
    script = (f"set net:max-retries 1; set net:timeout 15; set cmd:fail-exit true; {settings} "
              f"open -u {user},{password} ftp://127.0.0.1:{server.ports['ftp']}; {commands}")
    result = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lftp_mirrors_a_tree_both_ways(ftp_server, user, tmp_path):
    if not shutil.which("lftp"):
        print("skipped: lftp is not installed (Debian package lftp)")
        pytest.skip("lftp is not installed (Debian package lftp)")
    name, password = user
    source, back = tmp_path / "source", tmp_path / "back"
    source.mkdir()
    expected = make_tree(source)

    lftp(ftp_server, name, password, f"mirror -R {source} /site", tls=True)
    assert digest_tree(tree(ftp_server, name) / "site") == expected
    assert (tree(ftp_server, name) / "site" / "a" / "empty-dir").is_dir()

    lftp(ftp_server, name, password, f"mirror /site {back}", tls=False)
    assert digest_tree(back) == expected
    assert (back / "a" / "empty-dir").is_dir()

    # A second run transfers what changed, and removes what is gone with --delete.
    (source / "z.txt").write_bytes(b"changed")
    (source / "index.html").unlink()
    expected = digest_tree(source)
    lftp(ftp_server, name, password, f"mirror -R --delete {source} /site", tls=False)
    assert digest_tree(tree(ftp_server, name) / "site") == expected
    assert not leftovers(ftp_server, name)


# -- interrupted uploads --------------------------------------------------------------

# Uploads forever, in a process of its own, until it is killed.
DYING_CLIENT = """
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=15)
ftp.login(sys.argv[2], sys.argv[3])
ftp.voidcmd("TYPE I")
data = ftp.transfercmd("STOR doc.bin")
print("sending", flush=True)
while True:
    data.sendall(b"x" * 65536)
"""


def test_dropped_or_aborted_upload_keeps_the_previous_version(ftp_server, user):
    name, password = user
    old = os.urandom(200_000)
    with connect(ftp_server, name, password) as ftp:
        store(ftp, "doc.bin", old)

    # The client dies mid-upload (kill -9): the kernel closes both of its connections.
    client = subprocess.Popen([sys.executable, "-c", DYING_CLIENT, str(ftp_server.ports["ftp"]), name, password],
                              stdout=subprocess.PIPE)
    assert client.stdout.readline() == b"sending\n"
    time.sleep(0.3)
    client.kill()
    client.wait()
    assert wait_for(lambda: not leftovers(ftp_server, name), timeout=5.0)

    # The control connection drops, then the data connection closes as if complete.
    ftp = connect(ftp_server, name, password)
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd("STOR doc.bin")
    data.sendall(os.urandom(500_000))
    ftp.close()
    time.sleep(0.2)
    data.close()
    assert wait_for(lambda: not leftovers(ftp_server, name), timeout=5.0)
    with connect(ftp_server, name, password) as ftp:
        assert sha(fetch(ftp, "doc.bin")) == sha(old)

    # The data connection is reset while the control connection stays: 426 (or 425 when
    # the reset comes before the server took the connection), not 226.
    ftp = connect(ftp_server, name, password)
    ftp.voidcmd("TYPE I")
    for _ in range(3):
        data = ftp.transfercmd("STOR doc.bin")
        data.sendall(os.urandom(500_000))
        data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        data.close()
        with pytest.raises(ftplib.error_temp, match="^42[56]"):
            ftp.voidresp()

    # ABOR in the middle of a STOR.
    data = ftp.transfercmd("STOR doc.bin")
    data.sendall(os.urandom(300_000))
    assert ftp.abort().startswith(("426", "225", "226"))
    data.close()
    try:
        ftp.voidresp()  # the 226 that follows a 426
    except ftplib.Error:
        pass
    assert sha(fetch(ftp, "doc.bin")) == sha(old)
    assert ftp.nlst() == ["doc.bin"]
    ftp.quit()
    assert sha((tree(ftp_server, name) / "doc.bin").read_bytes()) == sha(old)
    assert [p.name for p in tree(ftp_server, name).iterdir()] == ["doc.bin"]
    assert wait_for(lambda: not leftovers(ftp_server, name), timeout=5.0)


def test_quota_breach_is_552_and_stores_nothing(ftp_server):
    name, password = "q" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    with ftp_server.admin() as http:
        response = http.post("/api/v1/users", json={"name": name, "password": password, "quota_bytes": 200_000})
    assert response.status_code == 201, response.text
    keep = os.urandom(120_000)
    with connect(ftp_server, name, password) as ftp:
        store(ftp, "keep.bin", keep)
        assert store_refused(ftp, "big.bin", os.urandom(150_000)).startswith("552")
        # Replacing a file counts only the difference; going beyond is refused too, and
        # the old version stays.
        assert store_refused(ftp, "keep.bin", os.urandom(250_000)).startswith("552")
        store(ftp, "keep.bin", keep[:100_000] + os.urandom(90_000))
        assert ftp.nlst() == ["keep.bin"]
        ftp.voidcmd("TYPE I")
        assert ftp.size("keep.bin") == 190_000
        store(ftp, "small.bin", b"s" * 5_000)
        assert store_refused(ftp, "small.bin", b"t" * 20_000).startswith("552")
        assert fetch(ftp, "small.bin") == b"s" * 5_000
    assert wait_for(lambda: not leftovers(ftp_server, name), timeout=5.0)


# -- path tricks and other users ------------------------------------------------------


def test_path_tricks_are_refused(ftp_server, user):
    name, password = user
    home = tree(ftp_server, name)
    outside = ftp_server.data_dir / "outside.txt"
    outside.write_bytes(b"not yours")
    with connect(ftp_server, name, password) as ftp:
        store(ftp, "mine.txt", b"mine")
        ftp.mkd("sub")
        ftp.cwd("sub")
        assert fetch(ftp, "../mine.txt") == b"mine"  # '..' inside the tree is fine
        for command in ("RETR ../../outside.txt", "CWD ../..", "CWD /../..", "LIST ../..",
                        "SIZE /../outside.txt", "MKD ../../evil", "DELE ../../outside.txt",
                        "STOR ../../evil", "RNFR ../../outside.txt"):
            reply = refused(ftp, command)
            assert reply.startswith("550") and "outside" in reply, (command, reply)
        ftp.cwd("/")
        # Absolute paths are virtual: /etc/passwd is looked for in the user's tree.
        assert refused(ftp, "RETR /etc/passwd").startswith("550")
        assert refused(ftp, "SIZE %2e%2e%2foutside.txt").startswith("550")
        assert refused(ftp, "RETR ..\\outside.txt").startswith("550")
        # NUL and control characters, sent raw.
        for command in (b"RETR mine\x00.txt", b"MKD a\x00b", b"CWD a\x01b", b"DELE mine.txt\x00"):
            ftp.sock.sendall(command + b"\r\n")
            with pytest.raises(ftplib.error_perm, match="^55[03]"):
                ftp.getresp()
        ftp.sock.sendall(b"STOR new\x00.txt\r\n")
        with pytest.raises(ftplib.error_perm, match="^553"):
            ftp.getresp()

        # Symlinks placed in the tree behind the server's back lead nowhere.
        os.symlink(outside, home / "link.txt")
        os.symlink("/etc", home / "etc")
        assert ftp.nlst() == ["mine.txt", "sub"]
        for command in ("RETR link.txt", "SIZE link.txt", "MDTM link.txt", "CWD etc", "LIST etc",
                        "RETR etc/hostname", "STOR link.txt", "STOR etc/new.txt", "APPE link.txt",
                        "DELE link.txt", "RNFR link.txt", "MKD etc/evil"):
            assert refused(ftp, command).startswith("550"), command
    assert outside.read_bytes() == b"not yours"
    assert not (ftp_server.data_dir / "evil").exists() and not Path("/etc/new.txt").exists()
    assert not (ftp_server.data_dir / "files" / "evil").exists()


def test_users_cannot_reach_each_other(ftp_server):
    alice, alice_pw = ftp_server.create_user()
    bob, bob_pw = ftp_server.create_user()
    with connect(ftp_server, alice, alice_pw) as ftp:
        store(ftp, "diary.txt", b"dear diary")
    with connect(ftp_server, bob, bob_pw) as ftp:
        assert ftp.nlst() == []
        for command in (f"RETR /{alice}/diary.txt", f"RETR ../{alice}/diary.txt", f"CWD ../{alice}",
                        f"CWD /{alice}", f"LIST ../{alice}", f"STOR ../{alice}/gift.txt",
                        f"DELE ../{alice}/diary.txt", f"SIZE ../{alice}/diary.txt"):
            assert refused(ftp, command).startswith("550"), command
        with pytest.raises(ftplib.error_perm):
            ftp.retrlines(f"LIST /{alice}", lambda line: None)
    assert [p.name for p in tree(ftp_server, alice).iterdir()] == ["diary.txt"]


# -- logins -----------------------------------------------------------------------------


def test_wrong_password_anonymous_and_disabled_users(ftp_server, user):
    name, password = user
    with connect(ftp_server) as ftp:
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.login(name, "not-the-password")
        with pytest.raises(ftplib.error_perm, match="^530 Anonymous"):
            ftp.login("anonymous", "guest@example.com")
        with pytest.raises(ftplib.error_perm, match="^530"):
            ftp.nlst()  # not logged in
    with ftp_server.admin() as http:
        assert http.patch(f"/api/v1/users/{name}", json={"disabled": True}).status_code == 200
    with connect(ftp_server) as ftp, pytest.raises(ftplib.error_perm, match="^530"):
        ftp.login(name, password)
    with ftp_server.admin() as http:
        http.patch(f"/api/v1/users/{name}", json={"disabled": False})
    with connect(ftp_server, name, password) as ftp:
        assert ftp.pwd() == "/"


def test_rate_limited_after_failed_logins(limits_server):
    name, password = limits_server.create_user()
    source = "127.0.0.23"  # an address of its own, so that no other test is slowed down
    replies = []
    for _ in range(4):
        with connect(limits_server, source=source) as ftp:
            try:
                ftp.login(name, "wrong-password")
            except ftplib.Error as error:
                replies.append(str(error))
    # Two free failures, a third that starts the backoff, then refusals.
    assert replies[:3] == ["530 Wrong user name or password."] * 3
    assert replies[3].startswith("421") and "retry in" in replies[3]
    # Even the right password waits out the backoff from that address...
    with connect(limits_server, source=source) as ftp, pytest.raises(ftplib.error_temp, match="^421"):
        ftp.login(name, password)
    # ...while the user is not locked out from elsewhere.
    with connect(limits_server, name, password) as ftp:
        assert ftp.pwd() == "/"


# -- settings: limits, data connections, timeouts --------------------------------------


def test_limits_and_data_connection_settings(limits_server):
    name, password = limits_server.create_user()
    with connect(limits_server, name, password) as ftp:
        # files.max_upload
        assert "max_upload" in store_refused(ftp, "large.bin", os.urandom(100_000))
        assert ftp.nlst() == []
        store(ftp, "ok.bin", b"o" * 60_000)
        # ftp.active_mode = off
        ftp.set_pasv(False)
        with pytest.raises(ftplib.error_perm, match="^502"):
            ftp.nlst()
        ftp.set_pasv(True)
        # ftp.passive_ports and ftp.masquerade_address
        reply = ftp.sendcmd("PASV")
        numbers = [int(n) for n in re.search(r"\((.*)\)", reply).group(1).split(",")]
        assert numbers[:4] == [127, 0, 0, 2]
        assert 30100 <= numbers[4] * 256 + numbers[5] <= 30119
        port = int(re.search(r"\(\|\|\|(\d+)\|\)", ftp.sendcmd("EPSV")).group(1))
        assert 30100 <= port <= 30119
        assert fetch(ftp, "ok.bin") == b"o" * 60_000

        # ftp.max_connections_per_ip = 3 (this one and two more).
        others = [connect(limits_server), connect(limits_server)]
        with pytest.raises(ftplib.error_temp, match="^421"):
            connect(limits_server)
        for other in others:
            other.close()

    # ftp.idle_timeout = 2 s
    with connect(limits_server, name, password) as ftp:
        time.sleep(2.6)
        with pytest.raises((ftplib.error_temp, EOFError, OSError)):
            ftp.sendcmd("NOOP")

    # ftp.data_timeout = 1 s: a stalled upload is cut off, and nothing is stored.
    with connect(limits_server, name, password) as ftp:
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd("STOR stalled.bin") as data:
            data.sendall(b"s" * 1000)
            with pytest.raises(ftplib.error_temp, match="^421"):
                ftp.voidresp()
    assert wait_for(lambda: not leftovers(limits_server, name), timeout=5.0)
    assert [p.name for p in tree(limits_server, name).iterdir()] == ["ok.bin"]


def test_connections_gauge(ftp_server, user):
    name, password = user
    with connect(ftp_server, name, password):
        with ftp_server.client() as http:
            metrics = http.get("/metrics").text
    count = re.search(r'agora_connections\{listener="ftp"\} (\S+)', metrics)
    assert count and float(count.group(1)) >= 1


def test_shutdown_lets_a_download_finish(make_server):
    server = make_server(args=FTP_ARGS, env={**SERVER_ENV, "AGORA_SHUTDOWN_TIMEOUT": "10"})
    name, password = server.create_user()
    data = os.urandom(24 * 1024 * 1024)
    (tree(server, name)).mkdir(parents=True, exist_ok=True)
    (tree(server, name) / "big.bin").write_bytes(data)
    ftp = connect(server, name, password)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    received = bytearray(conn.recv(65536))
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.ports["ftp"]), timeout=2).close()
    while chunk := conn.recv(1024 * 1024):
        received += chunk
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert sha(bytes(received)) == sha(data)
    assert server.proc.wait(15) == 0
