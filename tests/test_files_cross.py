"""One tree, every protocol: what FTP, WebDAV or the API wrote, the others read back
byte for byte; a page uploaded by FTP is live on the user's site at once."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os

import httpx

from conftest import AgoraServer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ftp_put(server: AgoraServer, user: str, password: str, path: str, data: bytes) -> None:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.ports["ftp"], timeout=30)
        ftp.login(user, password)
        folder, _, name = path.rpartition("/")
        for part in filter(None, folder.split("/")):
            if part not in ftp.nlst():
                ftp.mkd(part)
            ftp.cwd(part)
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))


def ftp_get(server: AgoraServer, user: str, password: str, path: str) -> bytes:
    out = io.BytesIO()
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.ports["ftp"], timeout=30)
        ftp.login(user, password)
        ftp.retrbinary(f"RETR {path}", out.write)
    return out.getvalue()


def test_every_protocol_reads_what_the_others_wrote(server: AgoraServer):
    user, password = server.create_user()
    token = server.login(user, password)
    blobs = {name: os.urandom(size) for name, size in
             (("by-ftp.bin", 700_001), ("by-dav.bin", 512_123), ("by-api.bin", 333_333))}

    ftp_put(server, user, password, "/cross/by-ftp.bin", blobs["by-ftp.bin"])
    with httpx.Client(base_url=server.url, auth=(user, password), timeout=30) as dav:
        assert dav.put("/dav/cross/by-dav.bin", content=blobs["by-dav.bin"]).status_code in (201, 204)
    with server.client(token) as api:
        assert api.put("/api/v1/files/content/cross/by-api.bin", content=blobs["by-api.bin"]).status_code in (200, 201)

    for name, data in blobs.items():
        expected = sha(data)
        assert sha(ftp_get(server, user, password, f"/cross/{name}")) == expected, f"ftp reading {name}"
        with httpx.Client(base_url=server.url, auth=(user, password), timeout=30) as dav:
            assert sha(dav.get(f"/dav/cross/{name}").content) == expected, f"dav reading {name}"
        with server.client(token) as api:
            assert sha(api.get(f"/api/v1/files/content/cross/{name}").content) == expected, f"api reading {name}"
        on_disk = (server.data_dir / "files" / user / "cross" / name).read_bytes()
        assert sha(on_disk) == expected


def test_a_page_uploaded_by_ftp_is_served_on_the_site(server: AgoraServer):
    user, password = server.create_user()
    page = b"<!doctype html><title>hi</title><p>" + b"hello from ftp " * 300 + b"</p>"
    ftp_put(server, user, password, "/public/index.html", page)
    with server.client() as http:
        first = http.get(f"/~{user}/")
        assert first.status_code == 200 and first.content == page
        assert first.headers["content-type"].startswith("text/html")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        assert http.get(f"/~{user}/", headers={"If-None-Match": etag}).status_code == 304
        assert http.get(f"/~{user}/", headers={"If-Modified-Since": modified}).status_code == 304
        partial = http.get(f"/~{user}/index.html", headers={"Range": "bytes=10-99"})
        assert partial.status_code == 206 and partial.content == page[10:100]
        assert partial.headers["content-range"] == f"bytes 10-99/{len(page)}"
    # A new version over FTP replaces the old one on the site at once.
    ftp_put(server, user, password, "/public/index.html", b"<p>version two</p>")
    with server.client() as http:
        again = http.get(f"/~{user}/", headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.content == b"<p>version two</p>"


def test_a_deleted_users_files_go_with_the_account(server: AgoraServer):
    user, password = server.create_user()
    ftp_put(server, user, password, "/private/diary.txt", b"dear diary")
    tree = server.data_dir / "files" / user
    assert (tree / "private" / "diary.txt").exists()
    with server.admin() as http:
        assert http.delete(f"/api/v1/users/{user}").status_code == 204
    assert not tree.exists()
    # A new account of the same name starts empty: it inherits nothing.
    server.create_user(user, "another-password")
    token = server.login(user, "another-password")
    with server.client(token) as api:
        listing = api.get("/api/v1/files/list/").json()
    assert "private" not in str(listing)

    # The same through the CLI, working on the data dir while the server runs.
    ftp_put(server, user, "another-password", "/again.txt", b"x")
    result = server.cli("user", "delete", user, "--yes")
    assert result.returncode == 0, result.stderr
    assert not tree.exists()
