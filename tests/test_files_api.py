"""The files HTTP API, share links and the Python client's files sub-API, against real
servers on both backends: bytes round-trip, ranges and conditional requests, resumable
and interrupted uploads, quota, path tricks, isolation between users."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import secrets
import socket
import time
from pathlib import Path

import httpx
import pytest

from agora.client import AsyncClient, Client, NotFound, TransferProgress

API = "/api/v1/files"
PROBLEM = "application/problem+json"
# Wrong share passwords come from an address of their own, so that they never count
# towards the rate limit of 127.0.0.1, which every other test logs in from.
PROBE_ADDRESS = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    if slug:
        assert body["type"] == f"urn:agora:problem:{slug}"
    return body


@pytest.fixture
def user(server):
    """A fresh user: (name, token, httpx client with that token)."""
    name, password = server.create_user()
    token = server.login(name, password)
    with server.client(token) as http:
        yield name, token, http


def put(http: httpx.Client, path: str, data: bytes, **headers: str) -> httpx.Response:
    return http.put(f"{API}/content{path}", content=data,
                    headers={"Content-Type": "application/octet-stream", **headers})


def raw(server, method: str, target: str, token: str | None = None, body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request whose target goes out byte for byte: httpx would normalise '..' away."""
    conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    try:
        all_headers = {"Content-Type": "application/json" if body.startswith(b"{") else "application/octet-stream",
                       **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        conn.request(method, target, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def tree_of(server, name: str) -> Path:
    return server.data_dir / "files" / name


def temporaries_of(server, name: str) -> list[str]:
    uploads = server.data_dir / "files" / ".uploads"
    return [p.name for p in uploads.glob(f"{name}.*")] if uploads.exists() else []


# -- bytes in and out -----------------------------------------------------------------


def test_upload_and_download_byte_for_byte(user):
    _, _, http = user
    data = os.urandom(3 * 1024 * 1024 + 17)
    created = put(http, "/big.bin", data)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert (entry["name"], entry["path"], entry["type"], entry["size"]) == ("big.bin", "/big.bin", "file", len(data))
    assert created.headers["etag"] == entry["etag"] and created.headers["location"].endswith("/big.bin")

    got = http.get(f"{API}/content/big.bin")
    assert got.status_code == 200 and sha(got.content) == sha(data)
    assert got.headers["etag"] == entry["etag"] and got.headers["accept-ranges"] == "bytes"
    assert got.headers["last-modified"].endswith("GMT")
    assert got.headers["content-type"] == "application/octet-stream"
    put(http, "/page.html", b"<script>alert(1)</script>")
    page = http.get(f"{API}/content/page.html")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "sandbox" in page.headers["content-security-policy"]  # scripts in users' files never run as us

    replaced = put(http, "/big.bin", b"version two")
    assert replaced.status_code == 200 and replaced.json()["etag"] != entry["etag"]
    assert http.get(f"{API}/content/big.bin").content == b"version two"

    assert put(http, "/r\u00e9sum\u00e9.txt", b"hello").status_code == 201
    text = http.get(f"{API}/content/r%C3%A9sum%C3%A9.txt", params={"download": "1"})
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.headers["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.txt" in text.headers["content-disposition"]
    head = http.head(f"{API}/content/r%C3%A9sum%C3%A9.txt")
    assert head.status_code == 200 and head.headers["content-length"] == "5" and head.content == b""


def test_ranges(user):
    _, _, http = user
    data = bytes(range(256)) * 40
    put(http, "/r.bin", data)
    part = http.get(f"{API}/content/r.bin", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert part.headers["content-length"] == "100"
    tail = http.get(f"{API}/content/r.bin", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    rest = http.get(f"{API}/content/r.bin", headers={"Range": f"bytes={len(data) - 5}-"})
    assert rest.status_code == 206 and rest.content == data[-5:]
    beyond = http.get(f"{API}/content/r.bin", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    several = http.get(f"{API}/content/r.bin", headers={"Range": "bytes=0-1,5-6"})
    assert several.status_code == 200 and several.content == data  # allowed: the whole file
    # If-Range with another version's validator: the whole (current) file instead.
    stale = http.get(f"{API}/content/r.bin", headers={"Range": "bytes=0-9", "If-Range": '"0-0"'})
    assert stale.status_code == 200 and stale.content == data
    etag = part.headers["etag"]
    fresh = http.get(f"{API}/content/r.bin", headers={"Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == data[:10]


def test_conditional_get(user):
    _, _, http = user
    put(http, "/c.txt", b"cache me")
    first = http.get(f"{API}/content/c.txt")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    same = http.get(f"{API}/content/c.txt", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    assert http.get(f"{API}/content/c.txt", headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert http.get(f"{API}/content/c.txt", headers={"If-None-Match": '"other"'}).status_code == 200
    assert http.get(f"{API}/content/c.txt", headers={"If-Modified-Since": modified}).status_code == 304
    assert http.get(f"{API}/content/c.txt",
                    headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    assert http.get(f"{API}/content/c.txt",
                    headers={"If-None-Match": '"other"', "If-Modified-Since": modified}).status_code == 200
    assert http.get(f"{API}/content/c.txt", headers={"If-Match": '"other"'}).status_code == 412


# -- folders ------------------------------------------------------------------------------


def test_listing_mkdir_move_copy_delete(user):
    _, _, http = user
    assert http.get(f"{API}/list").json() == {"path": "/", "entries": []}
    made = http.post(f"{API}/mkdir", json={"path": "/docs"})
    assert made.status_code == 201 and made.json()["type"] == "dir"
    assert_problem(http.post(f"{API}/mkdir", json={"path": "/docs"}), 409)
    assert_problem(http.post(f"{API}/mkdir", json={"path": "/a/b/c"}), 404)
    assert http.post(f"{API}/mkdir", json={"path": "/a/b/c", "parents": True}).status_code == 201
    put(http, "/docs/one.txt", b"1")
    put(http, "/zeta.txt", b"22")

    root = http.get(f"{API}/list").json()
    assert [(e["name"], e["type"]) for e in root["entries"]] == [("a", "dir"), ("docs", "dir"), ("zeta.txt", "file")]
    zeta = root["entries"][2]
    assert zeta["path"] == "/zeta.txt" and zeta["size"] == 2 and zeta["mtime"].endswith("Z") and zeta["etag"]
    assert [e["name"] for e in http.get(f"{API}/list/docs").json()["entries"]] == ["one.txt"]
    assert http.get(f"{API}/list/docs/").json()["path"] == "/docs"
    assert_problem(http.get(f"{API}/list/zeta.txt"), 409)
    assert_problem(http.get(f"{API}/list/nope"), 404)
    assert http.get(f"{API}/stat/docs/one.txt").json()["size"] == 1

    moved = http.post(f"{API}/move", json={"from": "/zeta.txt", "to": "/docs/z.txt"})
    assert moved.status_code == 200 and moved.json()["path"] == "/docs/z.txt"
    assert_problem(http.post(f"{API}/move", json={"from": "/docs/z.txt", "to": "/docs/one.txt"}), 409)
    assert http.post(f"{API}/move", json={"from": "/docs/z.txt", "to": "/docs/one.txt",
                                          "overwrite": True}).status_code == 200
    assert http.get(f"{API}/content/docs/one.txt").content == b"22"
    assert_problem(http.post(f"{API}/move", json={"from": "/docs", "to": "/docs/inner"}), 409)

    copied = http.post(f"{API}/copy", json={"from": "/docs", "to": "/a/docs"})
    assert copied.status_code == 201 and copied.json()["type"] == "dir"
    assert http.get(f"{API}/content/a/docs/one.txt").content == b"22"
    assert http.get(f"{API}/usage").json()["used"] == 4

    assert_problem(http.delete(f"{API}/content/docs"), 409)
    assert http.delete(f"{API}/content/docs", params={"recursive": "true"}).status_code == 204
    assert http.delete(f"{API}/content/a/docs/one.txt").status_code == 204
    assert_problem(http.delete(f"{API}/content/a/docs/one.txt"), 404)
    assert_problem(http.delete(f"{API}/content/"), 403)
    usage = http.get(f"{API}/usage").json()
    assert usage["used"] == 0 and usage["quota"] > 0


# -- uploads: resume, preconditions, interruptions, limits ----------------------------------


def test_resumable_upload_with_content_range(user):
    _, _, http = user
    data = os.urandom(300_000)
    first = put(http, "/resume.bin", data[:100_000], **{"Content-Range": f"bytes 0-99999/{len(data)}"})
    assert first.status_code == 201 and first.json()["size"] == 100_000
    wrong = put(http, "/resume.bin", data[50_000:], **{"Content-Range": f"bytes 50000-299999/{len(data)}"})
    assert assert_problem(wrong, 409, "upload-offset")["size"] == 100_000
    stale = put(http, "/resume.bin", data[100_000:200_000], **{
        "Content-Range": f"bytes 100000-199999/{len(data)}", "If-Match": '"0-0"'})
    assert_problem(stale, 412, "precondition-failed")
    second = put(http, "/resume.bin", data[100_000:200_000], **{
        "Content-Range": f"bytes 100000-199999/{len(data)}", "If-Match": first.json()["etag"]})
    assert second.status_code == 200 and second.json()["size"] == 200_000
    last = put(http, "/resume.bin", data[200_000:], **{"Content-Range": "bytes 200000-299999/*"})
    assert last.status_code == 200 and last.json()["size"] == len(data)
    assert sha(http.get(f"{API}/content/resume.bin").content) == sha(data)
    # A body that does not match the announced range is refused and changes nothing.
    short = put(http, "/resume.bin", b"abc", **{"Content-Range": "bytes 300000-300009/300010"})
    assert_problem(short, 422)
    assert_problem(put(http, "/resume.bin", b"x", **{"Content-Range": "bytes 9-0/10"}), 422)
    assert http.get(f"{API}/stat/resume.bin").json()["size"] == len(data)


def test_conditional_put_and_delete(user):
    _, _, http = user
    created = put(http, "/p.txt", b"one", **{"If-None-Match": "*"})
    assert created.status_code == 201
    assert_problem(put(http, "/p.txt", b"two", **{"If-None-Match": "*"}), 412)
    assert_problem(put(http, "/p.txt", b"two", **{"If-Match": '"stale"'}), 412)
    assert_problem(put(http, "/new.txt", b"two", **{"If-Match": "*"}), 412)
    assert put(http, "/p.txt", b"two", **{"If-Match": created.json()["etag"]}).status_code == 200
    assert http.get(f"{API}/content/p.txt").content == b"two"
    assert_problem(http.delete(f"{API}/content/p.txt", headers={"If-Match": created.json()["etag"]}), 412)
    assert http.get(f"{API}/content/p.txt").content == b"two"


def test_dropped_upload_leaves_the_old_version_and_nothing_else(server, user):
    name, token, http = user
    put(http, "/keep.bin", b"the old version")
    sock = socket.create_connection(("127.0.0.1", server.ports["http"]))
    sock.sendall((f"PUT {API}/content/keep.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {1024 * 1024}\r\n\r\n").encode() + os.urandom(512 * 1024))
    time.sleep(0.3)  # let the server start writing
    sock.close()
    deadline = time.monotonic() + 10
    while temporaries_of(server, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temporaries_of(server, name) == []
    assert http.get(f"{API}/content/keep.bin").content == b"the old version"
    assert sorted(p.name for p in tree_of(server, name).iterdir()) == ["keep.bin"]


def test_quota_breach_is_413_and_stores_nothing(server):
    name, password = "q" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    with server.admin() as admin:
        assert admin.post("/api/v1/users", json={"name": name, "password": password,
                                                  "quota_bytes": 100_000}).status_code == 201
    with server.client(server.login(name, password)) as http:
        assert put(http, "/small.bin", os.urandom(60_000)).status_code == 201
        # Announced: refused before a byte is stored.
        assert_problem(put(http, "/big.bin", os.urandom(200_000)), 413, "quota-exceeded")
        # Streamed without a length: refused when the quota is reached.
        body = (os.urandom(10_000) for _ in range(20))
        streamed = http.put(f"{API}/content/streamed.bin", content=body,
                            headers={"Content-Type": "application/octet-stream"})
        assert_problem(streamed, 413, "quota-exceeded")
        # Replacing a file frees its old size first.
        assert put(http, "/small.bin", os.urandom(90_000)).status_code == 200
        assert_problem(http.post(f"{API}/copy", json={"from": "/small.bin", "to": "/copy.bin"}), 413)
        listed = [e["name"] for e in http.get(f"{API}/list").json()["entries"]]
        assert listed == ["small.bin"]
        assert http.get(f"{API}/usage").json() == {"used": 90_000, "quota": 100_000}
    assert temporaries_of(server, name) == []
    assert sorted(p.name for p in tree_of(server, name).iterdir()) == ["small.bin"]


def test_max_upload_is_enforced(make_server):
    server = make_server(env={"AGORA_FILES_MAX_UPLOAD": "64K"})
    name, password = server.create_user()
    with server.client(server.login(name, password)) as http:
        assert put(http, "/ok.bin", os.urandom(64 * 1024)).status_code == 201
        assert_problem(put(http, "/big.bin", os.urandom(64 * 1024 + 1)), 413, "too-large")
        body = (os.urandom(16 * 1024) for _ in range(5))
        assert_problem(http.put(f"{API}/content/big.bin", content=body), 413, "too-large")
        ranged = put(http, "/big.bin", b"x", **{"Content-Range": "bytes 0-0/100000"})
        assert_problem(ranged, 413, "too-large")
        assert [e["name"] for e in http.get(f"{API}/list").json()["entries"]] == ["ok.bin"]


# -- path safety and isolation --------------------------------------------------------------


TRICKS = ["../x", "%2e%2e%2fx", "..%2fx", "%2e%2e/x", "a/%2e%2e/%2e%2e/x", "a%00b", "docs/..%2f..%2fetc"]


def test_path_tricks_are_refused_on_every_route(server, user, tmp_path):
    name, token, http = user
    http.post(f"{API}/mkdir", json={"path": "/docs"})
    assert put(http, "/docs/ok.txt", b"fine").status_code == 201
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    os.symlink(outside, tree_of(server, name) / "link")
    os.symlink(outside / "secret.txt", tree_of(server, name) / "docs" / "secret.txt")

    for trick in TRICKS + ["link/secret.txt", "docs/secret.txt"]:
        for method, target, body in [
            ("GET", f"{API}/content/{trick}", b""), ("HEAD", f"{API}/content/{trick}", b""),
            ("PUT", f"{API}/content/{trick}", b"evil"), ("DELETE", f"{API}/content/{trick}", b""),
            ("GET", f"{API}/list/{trick}", b""), ("GET", f"{API}/stat/{trick}", b""),
        ]:
            status, answer = raw(server, method, target, token, body)
            assert status in (403, 404, 422), (method, target, status, answer)
            assert b"not yours" not in answer
        decoded = trick.replace("%2e", ".").replace("%2f", "/").replace("%00", "\x00")
        for route, document in [("mkdir", {"path": decoded}), ("move", {"from": "/docs/ok.txt", "to": decoded}),
                                ("copy", {"from": decoded, "to": "/stolen"}), ("shares", {"path": decoded}),
                                ("copy", {"from": "/docs/ok.txt", "to": decoded})]:
            response = http.post(f"{API}/{route}", json=document)
            assert response.status_code in (403, 404, 422), (route, document, response.text)
    assert (outside / "secret.txt").read_text() == "not yours"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert [e["name"] for e in http.get(f"{API}/list").json()["entries"]] == ["docs"]  # links never listed
    assert [e["name"] for e in http.get(f"{API}/list/docs").json()["entries"]] == ["ok.txt"]
    assert http.get(f"{API}/content/docs/ok.txt").content == b"fine"


def test_users_cannot_reach_each_other(server):
    alice_name, alice_pw = server.create_user()
    bob_name, bob_pw = server.create_user()
    with server.client(server.login(alice_name, alice_pw)) as alice, \
            server.client(server.login(bob_name, bob_pw)) as bob:
        assert alice.post(f"{API}/mkdir", json={"path": "/private"}).status_code == 201
        put(alice, "/private/diary.txt", b"alice only")
        link = alice.post(f"{API}/shares", json={"path": "/private"}).json()

        assert_problem(bob.get(f"{API}/list/private"), 404)
        assert_problem(bob.get(f"{API}/content/private/diary.txt"), 404)
        assert_problem(bob.delete(f"{API}/content/private", params={"recursive": "true"}), 404)
        for trick in (f"../{alice_name}/private/diary.txt", f"%2e%2e/{alice_name}/private/diary.txt"):
            status, answer = raw(server, "GET", f"{API}/content/{trick}", bob.headers["authorization"][7:])
            assert status in (404, 422) and b"alice only" not in answer
        assert_problem(bob.post(f"{API}/shares", json={"path": "/private"}), 404)
        assert_problem(bob.delete(f"{API}/shares/{link['id']}"), 404)
        assert bob.get(f"{API}/shares").json() == []
        # Bob's writes land in Bob's tree.
        assert put(bob, "/diary.txt", b"bob's").status_code == 201
        assert alice.get(f"{API}/content/private/diary.txt").content == b"alice only"
        assert [e["name"] for e in alice.get(f"{API}/list").json()["entries"]] == ["private"]
        assert alice.get(f"{API}/shares").json()[0]["active"] is True
    with server.client() as anonymous:
        assert_problem(anonymous.get(f"{API}/list"), 401)
        assert_problem(anonymous.put(f"{API}/content/x", content=b"x"), 401)


# -- share links ----------------------------------------------------------------------------


def test_share_link_to_a_file(server, user):
    name, _, http = user
    data = os.urandom(100_000)
    put(http, "/report.pdf", data)
    created = http.post(f"{API}/shares", json={"path": "/report.pdf"})
    assert created.status_code == 201
    link = created.json()
    assert link["downloads"] == 0 and link["password"] is False and link["active"] is True
    assert link["url"].endswith(f"/s/{link['token']}") and len(link["token"]) >= 43
    assert link["expires_at"]  # bounded by files.share_max_lifetime even when not asked for
    with server.client() as anonymous:
        got = anonymous.get(f"/s/{link['token']}")
        assert got.status_code == 200 and sha(got.content) == sha(data)
        assert got.headers["content-type"] == "application/pdf"
        assert 'filename="report.pdf"' in got.headers["content-disposition"]
        assert "sandbox" not in got.headers["content-security-policy"]  # the PDF viewer works
        part = anonymous.get(f"/s/{link['token']}", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert anonymous.get(f"/s/{link['token']}", headers={"If-None-Match": got.headers["etag"]}).status_code == 304
        assert anonymous.head(f"/s/{link['token']}").status_code == 200
        assert anonymous.get(f"/s/{link['token']}").status_code == 200
        assert_problem(anonymous.get(f"/s/{link['token']}/inside"), 404)
        assert_problem(anonymous.get(f"/s/{link['token'][:-1]}x"), 404)
        # Neither the API nor any other file opens with a link.
        assert_problem(anonymous.get(f"{API}/content/report.pdf",
                                     headers={"Authorization": f"Bearer {link['token']}"}), 401)
    listed = http.get(f"{API}/shares").json()
    assert [(s["id"], s["downloads"]) for s in listed] == [(link["id"], 2)]  # ranges and 304s do not count
    assert "token" not in listed[0] and link["token"] not in str(listed)

    assert http.delete(f"{API}/shares/{link['id']}").status_code == 204
    with server.client() as anonymous:
        gone = anonymous.get(f"/s/{link['token']}")
        assert_problem(gone, 404)
        page = anonymous.get(f"/s/{link['token']}", headers={"Accept": "text/html"})
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert http.get(f"{API}/shares").json()[0]["revoked"] is True
    with server.admin() as admin:
        actions = [(e["action"], e["actor"]) for e in admin.get("/api/v1/audit", params={"actor": name}).json()["entries"]]
    assert ("share.create", name) in actions and ("share.revoke", name) in actions


def test_share_link_to_a_folder_stays_inside_it(server, user):
    _, _, http = user
    put(http, "/secret.txt", b"not shared")
    http.post(f"{API}/mkdir", json={"path": "/pub/sub dir", "parents": True})
    put(http, "/pub/a.txt", b"A")
    put(http, "/pub/sub dir/b \u00e9.txt", b"B")
    link = http.post(f"{API}/shares", json={"path": "/pub"}).json()
    token = link["token"]
    with server.client() as anonymous:
        page = anonymous.get(f"/s/{token}", headers={"Accept": "text/html"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "a.txt" in page.text and f"/s/{token}/sub%20dir/" in page.text and "<script>" not in page.text
        inner = anonymous.get(f"/s/{token}/sub%20dir/")
        assert inner.status_code == 200 and f"/s/{token}/sub%20dir/b%20%C3%A9.txt" in inner.text
        assert anonymous.get(f"/s/{token}/sub%20dir/b%20%C3%A9.txt").content == b"B"
        assert anonymous.get(f"/s/{token}/a.txt").content == b"A"
    for trick in ("../secret.txt", "%2e%2e/secret.txt", "..%2fsecret.txt", "sub%20dir/../../secret.txt",
                  "a%00.txt", "%2fsecret.txt"):
        status, answer = raw(server, "GET", f"/s/{token}/{trick}")
        assert status == 404 and b"not shared" not in answer, (trick, status)
    assert http.get(f"{API}/shares").json()[0]["downloads"] == 2


def test_share_link_with_a_password(server, user):
    _, _, http = user
    put(http, "/locked.txt", b"behind a password")
    link = http.post(f"{API}/shares", json={"path": "/locked.txt", "password": "open sesame"}).json()
    assert link["password"] is True
    url = f"/s/{link['token']}"
    with server.client() as anonymous:
        asked = anonymous.get(url)
        assert_problem(asked, 401)
        assert asked.headers["www-authenticate"].startswith("Basic")
        form = anonymous.get(url, headers={"Accept": "text/html"})
        assert form.status_code == 401 and "www-authenticate" not in form.headers
        assert '<form method="post"' in form.text and "<script>" not in form.text
        assert "behind a password" not in form.text
        with_file = anonymous.post(url, data={"password": "open sesame"}, files={"f": b"x" * 100_000})
        assert with_file.status_code == 400  # no anonymous multipart spooled to disk
        unlocked = anonymous.post(url, data={"password": "open sesame"})
        assert unlocked.status_code == 303 and unlocked.headers["location"] == url
        cookie = unlocked.headers["set-cookie"]
        assert f"Path={url}" in cookie and "HttpOnly" in cookie
        assert anonymous.get(url).content == b"behind a password"  # the cookie now does it
    with server.client() as script:
        basic = script.get(url, auth=("any", "open sesame"))
        assert basic.content == b"behind a password"
        assert "agora_share=" in basic.headers["set-cookie"]  # spares the next requests a hash
    with server.client() as other:
        assert other.get(url).status_code == 401  # the cookie was that browser's, not the link's
    with server.client(cookies={"agora_share": "9999999999.forged"}) as forger:
        assert forger.get(url).status_code == 401

    with server.client(local_address=PROBE_ADDRESS) as guesser:
        wrong = [guesser.get(url, auth=("x", f"guess {i}")).status_code for i in range(6)]
        assert wrong == [401] * 6
        limited = guesser.get(url, auth=("x", "open sesame"))
        assert_problem(limited, 429, "rate-limited")
        assert int(limited.headers["retry-after"]) >= 1
        page = guesser.post(url, data={"password": "guess"}, headers={"Accept": "text/html"})
        assert page.status_code == 429 and "Too many" in page.text
    assert http.get(f"{API}/shares").json()[0]["downloads"] == 2


def test_share_link_dies_with_its_owner(server):
    name, password = server.create_user()
    with server.client(server.login(name, password)) as http:
        put(http, "/f.txt", b"x")
        token = http.post(f"{API}/shares", json={"path": "/f.txt"}).json()["token"]
    with server.client() as anonymous:
        assert anonymous.get(f"/s/{token}").status_code == 200
        with server.admin() as admin:
            assert admin.patch(f"/api/v1/users/{name}", json={"disabled": True}).status_code == 200
            assert_problem(anonymous.get(f"/s/{token}"), 404)
            assert admin.patch(f"/api/v1/users/{name}", json={"disabled": False}).status_code == 200
            assert anonymous.get(f"/s/{token}").status_code == 200
            assert admin.delete(f"/api/v1/users/{name}").status_code == 204
        assert_problem(anonymous.get(f"/s/{token}"), 404)


def test_share_link_expiry_and_limits(server, user):
    _, _, http = user
    put(http, "/soon.txt", b"short-lived")
    link = http.post(f"{API}/shares", json={"path": "/soon.txt", "expires_in": 1}).json()
    with server.client() as anonymous:
        assert anonymous.get(f"/s/{link['token']}").status_code == 200
        time.sleep(1.2)
        assert_problem(anonymous.get(f"/s/{link['token']}"), 404)
    assert http.get(f"{API}/shares").json()[0]["active"] is False
    assert_problem(http.post(f"{API}/shares", json={"path": "/soon.txt", "expires_in": 0}), 422)
    too_long = http.post(f"{API}/shares", json={"path": "/soon.txt", "expires_in": 400 * 86400})
    assert_problem(too_long, 422)  # over files.share_max_lifetime (365 days by default)
    assert_problem(http.post(f"{API}/shares", json={"path": "/missing"}), 404)


# -- the Python client ----------------------------------------------------------------------


@pytest.fixture
def client(server, user):
    _, token, _ = user
    with Client(server.url, token) as client:
        yield client


def test_client_transfers_resume_both_ways(client, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    local = tmp_path / "data.bin"
    local.write_bytes(data)

    # put: the server holds the first MiB (an interrupted upload); only the rest is sent.
    client.files.mkdir("/in")
    client._transport.http.put(f"{API}/content/in/data.bin", content=data[:1024 * 1024])
    events: list[TransferProgress] = []
    stored = client.files.put(local, "/in/data.bin", progress=events.append)
    assert stored[0].size == len(data) and events[0].resumed_from == 1024 * 1024
    assert events[-1].done == events[-1].total == len(data)
    assert sha(client._transport.http.get(f"{API}/content/in/data.bin").content) == sha(data)

    # ...but not when the remote part is of some other file.
    client._transport.http.put(f"{API}/content/in/other.bin", content=os.urandom(1024 * 1024))
    events.clear()
    client.files.put(local, "/in/other.bin", progress=events.append)
    assert events[0].resumed_from == 0
    assert client.files.stat("/in/other.bin").size == len(data)

    # get: a .part holding the first MiB is kept and completed, then renamed.
    target = tmp_path / "copy.bin"
    (tmp_path / "copy.bin.part").write_bytes(data[:1024 * 1024])
    events.clear()
    fetched = client.files.get("/in/data.bin", target, progress=events.append)
    assert fetched[0].path == "/in/data.bin" and events[0].resumed_from == 1024 * 1024
    assert sha(target.read_bytes()) == sha(data) and not (tmp_path / "copy.bin.part").exists()
    assert abs(target.stat().st_mtime - fetched[0].mtime.timestamp()) < 1

    # A .part of another version is noticed by its overlap and dropped.
    (tmp_path / "copy.bin.part").write_bytes(os.urandom(2 * 1024 * 1024))
    client.files.get("/in/data.bin", target)
    assert sha(target.read_bytes()) == sha(data)
    # A .part longer than the file is dropped too.
    (tmp_path / "copy.bin.part").write_bytes(os.urandom(4 * 1024 * 1024))
    client.files.get("/in/data.bin", target)
    assert sha(target.read_bytes()) == sha(data)


def test_client_recursive_and_other_operations(client, tmp_path):
    source = tmp_path / "tree"
    (source / "a" / "b").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "top.txt").write_text("top")
    (source / "a" / "b" / "deep.bin").write_bytes(os.urandom(200_000))
    (source / "a" / "zero").write_bytes(b"")
    os.symlink(tmp_path, source / "loop")  # a link to a folder is not followed

    stored = client.files.put(source, "/tree")
    assert sorted(e.path for e in stored) == ["/tree/a/b/deep.bin", "/tree/a/zero", "/tree/top.txt"]
    assert [e.name for e in client.files.ls("/tree")] == ["a", "empty", "top.txt"]
    back = tmp_path / "back"
    fetched = client.files.get("/tree", back)
    assert len(fetched) == 3
    for path in ("top.txt", "a/b/deep.bin", "a/zero"):
        assert (back / path).read_bytes() == (source / path).read_bytes()
    assert (back / "empty").is_dir() and not (back / "loop").exists()

    assert client.files.mv("/tree/top.txt", "/tree/a/top.txt").path == "/tree/a/top.txt"
    assert client.files.cp("/tree/a", "/copy").is_dir
    assert client.files.du().used == 2 * (200_000 + 3)
    link = client.files.share("/tree", expires_in=600, password="pw")
    assert link.url.endswith(link.token) and link.token not in repr(link)
    assert [s.id for s in client.files.shares()] == [link.id] and client.files.shares()[0].password
    client.files.unshare(link.id)
    assert client.files.shares()[0].revoked
    client.files.rm("/tree", recursive=True)
    with pytest.raises(NotFound):
        client.files.stat("/tree")
    with pytest.raises(ValueError):
        client.files.ls("/../x")


def test_async_client_files(server, user, tmp_path):
    _, token, _ = user
    data = os.urandom(500_000)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "f.bin").write_bytes(data)

    async def scenario() -> None:
        async with AsyncClient(server.url, token) as client:
            await client.files.mkdir("/async")
            stored = await client.files.put(tmp_path / "up", "/async/up")
            assert [e.path for e in stored] == ["/async/up/f.bin"]
            assert [e.name for e in await client.files.ls("/async/up")] == ["f.bin"]
            (tmp_path / "down.part").write_bytes(data[:1000])
            events: list[TransferProgress] = []
            await client.files.get("/async/up/f.bin", tmp_path / "down", progress=events.append)
            assert events[0].resumed_from == 1000
            await client.files.get("/async", tmp_path / "all")
            link = await client.files.share("/async/up/f.bin")
            assert [s.id for s in await client.files.shares()] == [link.id]
            await client.files.unshare(link.id)
            assert (await client.files.du()).used == len(data)
            await client.files.rm("/async", recursive=True)
            assert await client.files.ls() == []

    asyncio.run(scenario())
    assert (tmp_path / "down").read_bytes() == data
    assert (tmp_path / "all" / "up" / "f.bin").read_bytes() == data
