"""WebDAV at /dav/: the litmus suite, and what OS clients rely on, against a real server."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from hypothesis import given, strategies as st

from agora.core.errors import InvalidInput
from agora.files import dav_xml
from agora.files.dav import request_path
from agora.files.dav_locking import parse_if
from agora.files.dav_request import DavError

D = "{DAV:}"
LITMUS_GROUPS = ("basic", "copymove", "props", "locks")


def dav(server, name: str, password: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/dav", auth=(name, password), timeout=30, **kwargs)


def propfind(client: httpx.Client, path: str, depth: str = "1", body: str | None = None) -> ET.Element:
    response = client.request("PROPFIND", path, headers={"Depth": depth}, content=body)
    assert response.status_code == 207, response.text
    return ET.fromstring(response.content)


def hrefs(multistatus: ET.Element) -> list[str]:
    return [r.findtext(f"{D}href") for r in multistatus.iter(f"{D}response")]


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def raw_request(server, method: str, target: str, auth: tuple[str, str], body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request whose target goes on the wire exactly as given (httpx would normalise it)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    try:
        connection.request(method, target, body=body, headers={
            "Authorization": basic(*auth), **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def create_user(server, quota: int | None = None) -> tuple[str, str]:
    name, password = "u" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    with server.admin() as admin:
        response = admin.post("/api/v1/users", json={"name": name, "password": password, "quota_bytes": quota})
    assert response.status_code == 201, response.text
    return name, password


# -- litmus ---------------------------------------------------------------------------

@pytest.mark.slow
def test_litmus(make_server, tmp_path):
    if shutil.which("litmus") is None:
        pytest.skip("litmus is not installed (Debian package `litmus`)")
    server = make_server()
    name, password = server.create_user()
    result = subprocess.run(
        ["litmus", "-k", server.url + "/dav/", name, password], cwd=tmp_path, capture_output=True,
        text=True, timeout=240, env={**os.environ, "TESTS": " ".join(LITMUS_GROUPS)})
    output = result.stdout + result.stderr
    summaries = dict(re.findall(r"summary for `(\w+)': of \d+ tests run: \d+ passed, (\d+) failed", output))
    for group in LITMUS_GROUPS:
        assert summaries.get(group) == "0", f"litmus group {group} did not pass:\n{output}"


# -- reading and writing -------------------------------------------------------------

def test_put_then_get_byte_for_byte_and_ranges(server):
    name, password = server.create_user()
    data = secrets.token_bytes(3 * 1024 * 1024 + 17)
    with dav(server, name, password) as client:
        assert client.request("MKCOL", "/docs/").status_code == 201
        assert client.put("/docs/blob.bin", content=data).status_code == 201
        got = client.get("/docs/blob.bin")
        assert got.status_code == 200
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
        assert got.headers["content-length"] == str(len(data))
        part = client.get("/docs/blob.bin", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        assert client.get("/docs/blob.bin", headers={"If-None-Match": got.headers["etag"]}).status_code == 304
        head = client.head("/docs/blob.bin")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        # Streamed without a Content-Length (chunked), then replaced: 204.
        assert client.put("/docs/blob.bin", content=iter([b"a" * 70000, b"b" * 5])).status_code == 204
        assert client.get("/docs/blob.bin").content == b"a" * 70000 + b"b" * 5
        assert client.put("/nofolder/x.txt", content=b"x").status_code == 409
        assert client.put("/docs/blob.bin", content=b"no", headers={"If-None-Match": "*"}).status_code == 412
        assert client.put("/docs/blob.bin", content=b"no", headers={"If-Match": '"stale"'}).status_code == 412


def test_propfind_lists_a_folder(server):
    name, password = server.create_user()
    with dav(server, name, password) as client:
        client.request("MKCOL", "/photos/")
        client.put("/photos/a b.jpg", content=b"12345")
        client.request("MKCOL", "/photos/sub/")
        listing = propfind(client, "/photos/")
        assert sorted(hrefs(listing)) == ["/dav/photos/", "/dav/photos/a%20b.jpg", "/dav/photos/sub/"]
        by_href = {r.findtext(f"{D}href"): r for r in listing.iter(f"{D}response")}
        assert by_href["/dav/photos/a%20b.jpg"].findtext(f".//{D}getcontentlength") == "5"
        assert by_href["/dav/photos/sub/"].find(f".//{D}resourcetype/{D}collection") is not None
        assert hrefs(propfind(client, "/photos/", depth="0")) == ["/dav/photos/"]
        assert client.request("PROPFIND", "/photos/", headers={"Depth": "infinity"}).status_code == 403
        assert client.request("PROPFIND", "/nothing/", headers={"Depth": "0"}).status_code == 404
        options = client.options("/")
        assert options.headers["dav"] == "1, 2"


def test_move_and_copy_carry_dead_properties(server):
    name, password = server.create_user()
    patch = ('<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:example">'
             "<D:set><D:prop><Z:color>blue</Z:color></D:prop></D:set></D:propertyupdate>")
    wanted = '<D:propfind xmlns:D="DAV:" xmlns:Z="urn:example"><D:prop><Z:color/></D:prop></D:propfind>'

    def color(client, path):
        found = propfind(client, path, depth="0", body=wanted).find(".//{urn:example}color")
        return None if found is None else found.text

    with dav(server, name, password) as client:
        client.request("MKCOL", "/a/")
        client.put("/a/f.txt", content=b"hello")
        assert client.request("PROPPATCH", "/a/f.txt", content=patch).status_code == 207
        copied = client.request("COPY", "/a/", headers={"Destination": server.url + "/dav/b/"})
        assert copied.status_code == 201
        assert client.get("/b/f.txt").content == b"hello" and color(client, "/b/f.txt") == "blue"
        moved = client.request("MOVE", "/b/f.txt", headers={"Destination": "/dav/c.txt"})
        assert moved.status_code == 201
        assert client.get("/b/f.txt").status_code == 404
        assert client.get("/c.txt").content == b"hello" and color(client, "/c.txt") == "blue"
        refused = client.request("MOVE", "/a/f.txt", headers={"Destination": "/dav/c.txt", "Overwrite": "F"})
        assert refused.status_code == 412
        assert client.delete("/c.txt").status_code == 204
        client.put("/c.txt", content=b"new")
        assert color(client, "/c.txt") is None  # a deleted resource's properties went with it
        renamed = client.request("MOVE", "/c.txt", headers={"Destination": "/dav/caf%C3%A9%20%E2%82%AC.txt"})
        assert renamed.status_code == 201 and client.get("/café €.txt").content == b"new"
        elsewhere = client.request("COPY", "/café €.txt", headers={"Destination": "http://elsewhere.example/dav/x"})
        assert elsewhere.status_code == 502


# -- isolation and path tricks --------------------------------------------------------

def test_users_see_only_their_own_tree(server):
    alice = server.create_user()
    bob = server.create_user()
    with dav(server, *alice) as client:
        client.request("MKCOL", "/private/")
        client.put("/private/secret.txt", content=b"alice's secret")
    with dav(server, *bob) as client:
        assert hrefs(propfind(client, "/")) == ["/dav/"]
        assert client.get("/private/secret.txt").status_code == 404
        copied = client.request("COPY", "/private/secret.txt", headers={"Destination": "/dav/mine.txt"})
        assert copied.status_code == 404
        assert client.put("/private/secret.txt", content=b"bob was here").status_code == 409
        assert client.delete("/private/").status_code == 404
    tricks = ["/dav/../files/{a}/private/secret.txt", "/dav/%2e%2e/{a}/private/secret.txt",
              "/dav/%2e%2e%2f{a}%2fprivate%2fsecret.txt", "/dav/..%2f..%2f{a}/private/secret.txt",
              "/dav/private%00/secret.txt", "/dav/%2E%2E/%2E%2E/etc/passwd"]
    for trick in tricks:
        status, body = raw_request(server, "GET", trick.format(a=alice[0]), bob)
        assert status in (400, 404), (trick, status)
        assert b"secret" not in body and b"root:" not in body
    status, _ = raw_request(server, "MOVE", "/dav/x", bob, headers={"Destination": f"/dav/../{alice[0]}/x"})
    assert status in (400, 404)
    with dav(server, *alice) as client:
        assert client.get("/private/secret.txt").content == b"alice's secret"


def test_a_symlink_in_the_tree_is_not_followed(server, tmp_path):
    name, password = server.create_user()
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the tree")
    with dav(server, name, password) as client:
        client.request("MKCOL", "/d/")
        os.symlink(outside, server.data_dir / "files" / name / "d" / "link")
        assert client.get("/d/link").status_code == 403
        assert client.put("/d/link", content=b"x").status_code == 403
        assert "link" not in "".join(hrefs(propfind(client, "/d/")))
    assert outside.read_text() == "outside the tree"


# -- durability and quota -------------------------------------------------------------

def test_a_dropped_put_leaves_the_old_version(server):
    name, password = server.create_user()
    with dav(server, name, password) as client:
        client.put("/keep.txt", content=b"version 1")
    sock = socket.create_connection(("127.0.0.1", server.ports["http"]))
    auth = basic(name, password)
    sock.sendall(f"PUT /dav/keep.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                 "Content-Length: 10000000\r\n\r\n".encode() + b"x" * 300_000)
    time.sleep(0.5)
    sock.close()
    uploads = server.data_dir / "files" / ".uploads"
    deadline = time.monotonic() + 10
    while any(uploads.glob(f"{name}.*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(uploads.glob(f"{name}.*")), "the partial upload was not removed"
    with dav(server, name, password) as client:
        assert client.get("/keep.txt").content == b"version 1"


def test_quota_breach_is_507_and_stores_nothing(server):
    name, password = create_user(server, quota=10_000)
    with dav(server, name, password) as client:
        assert client.put("/small.txt", content=b"s" * 4000).status_code == 201
        assert client.put("/big.bin", content=b"b" * 20_000).status_code == 507
        assert client.put("/big.bin", content=iter([b"c" * 4000] * 5)).status_code == 507  # no length
        assert client.get("/big.bin").status_code == 404
        assert client.put("/small.txt", content=b"t" * 9000).status_code == 204  # replacing frees the old
        assert client.request("COPY", "/small.txt", headers={"Destination": "/dav/copy.txt"}).status_code == 507
        quota = propfind(client, "/", depth="0", body='<D:propfind xmlns:D="DAV:"><D:prop>'
                         "<D:quota-used-bytes/><D:quota-available-bytes/></D:prop></D:propfind>")
        assert quota.findtext(f".//{D}quota-used-bytes") == "9000"
        assert quota.findtext(f".//{D}quota-available-bytes") == "1000"
    assert not any((server.data_dir / "files" / ".uploads").glob(f"{name}.*"))


# -- authentication ------------------------------------------------------------------

def test_authentication(server):
    name, password = server.create_user()
    with httpx.Client(base_url=server.url + "/dav", timeout=30) as anonymous:
        response = anonymous.request("PROPFIND", "/", headers={"Depth": "0"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Basic realm="agora"')
    with dav(server, name, "wrong-password") as client:
        assert client.request("PROPFIND", "/", headers={"Depth": "0"}).status_code == 401
    token = server.login(name, password)
    with httpx.Client(base_url=server.url + "/dav", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.put("/by-token.txt", content=b"t").status_code == 201
    with dav(server, name, token) as client:  # a token as the Basic password, for OS mounts
        assert client.get("/by-token.txt").content == b"t"
    with dav(server, name, "agora_not_a_real_token") as client:
        assert client.get("/by-token.txt").status_code == 401
    with httpx.Client(base_url=server.https_url + "/dav", auth=(name, password), verify=False) as client:
        assert client.get("/by-token.txt").content == b"t"


def test_basic_logins_are_checked_once_not_per_request(make_server):
    server = make_server()
    name, password = server.create_user()

    def dav_logins() -> float:
        metrics = httpx.get(server.url + "/metrics").text.splitlines()
        return sum(float(line.split()[-1]) for line in metrics if line.startswith("agora_logins_total")
                   and 'protocol="dav"' in line and 'outcome="ok"' in line)

    with dav(server, name, password) as client:
        for _ in range(5):  # plain http from loopback is allowed
            assert client.request("PROPFIND", "/", headers={"Depth": "0"}).status_code == 207
    assert dav_logins() == 1.0
    with server.admin() as admin:
        admin.patch(f"/api/v1/users/{name}", json={"password": "a-new-password-1"})
    with dav(server, name, password) as client:  # the remembered login ends with the password
        assert client.request("PROPFIND", "/", headers={"Depth": "0"}).status_code == 401


# -- locks ---------------------------------------------------------------------------

LOCKINFO = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            "<D:locktype><D:write/></D:locktype><D:owner>tests</D:owner></D:lockinfo>")


def test_locks_guard_writes_and_outlive_a_restart(make_server):
    server = make_server()
    name, password = server.create_user()
    with dav(server, name, password) as client:
        client.put("/doc.txt", content=b"v1")
        locked = client.request("LOCK", "/doc.txt", content=LOCKINFO, headers={"Timeout": "Second-600"})
        assert locked.status_code == 200
        token = locked.headers["lock-token"]
        assert client.put("/doc.txt", content=b"v2").status_code == 423
        assert client.delete("/doc.txt").status_code == 423
        assert client.request("LOCK", "/doc.txt", content=LOCKINFO).status_code == 423
    server.stop()
    server.start()
    with dav(server, name, password) as client:
        assert client.put("/doc.txt", content=b"v2").status_code == 423
        assert client.put("/doc.txt", content=b"v2", headers={"If": f"({token})"}).status_code == 204
        discovered = propfind(client, "/doc.txt", depth="0")
        assert discovered.findtext(f".//{D}locktoken/{D}href") == token.strip("<>")
        assert client.request("UNLOCK", "/doc.txt", headers={"Lock-Token": token}).status_code == 204
        assert client.delete("/doc.txt").status_code == 204
        fresh = client.request("LOCK", "/new.txt", content=LOCKINFO)
        assert fresh.status_code == 201 and client.get("/new.txt").content == b""


# -- the hand-written parsers, without a server --------------------------------------

def test_if_header_lists():
    token = "opaquelocktoken:1234"
    lists = parse_if(f"<http://h/dav/a> (<{token}> [\"e-1\"]) (Not <DAV:no-lock>)")
    assert [l.resource for l in lists] == ["http://h/dav/a", "http://h/dav/a"]
    assert lists[0].conditions[0].token == token and lists[0].conditions[1].etag == '"e-1"'
    assert lists[1].conditions[0].negated and lists[1].conditions[0].token == "DAV:no-lock"
    for malformed in ["", "(", "()", "<x>", "(Not)", "([e] x)", "(<a>) junk"]:
        with pytest.raises(DavError):
            parse_if(malformed)


@given(st.text(alphabet="<>()[] Not:/ab\"W", max_size=40))
def test_if_header_parser_never_crashes(value):
    try:
        lists = parse_if(value)
    except DavError as error:
        assert error.status == 400
    else:
        assert lists and all(l.conditions for l in lists)


@given(st.binary(max_size=200) | st.text(max_size=100).map(lambda t: f"<a xmlns='DAV:'>{t}</a>".encode()))
def test_xml_bodies_parse_or_are_refused(body):
    try:
        dav_xml.parse(body, 100)
    except InvalidInput:
        pass


def test_xml_entities_are_refused():
    bomb = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><a>&x;&x;</a>'
    for body in (bomb, bomb.decode().encode("utf-16")):
        with pytest.raises(InvalidInput):
            dav_xml.parse(body, 100)


def test_deeply_nested_xml_is_400(server):
    """A PROPPATCH or LOCK body nested past files.dav_max_xml_depth is refused with 400
    (it was a RecursionError and 500 when the property was written back out)."""
    name, password = create_user(server)
    deep = 50_000
    nested = "<x>" * deep + "</x>" * deep
    proppatch = (f'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
                 f'<p xmlns="urn:t">{nested}</p></D:prop></D:set></D:propertyupdate>')
    lock = (f'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            f'<D:locktype><D:write/></D:locktype><D:owner>{nested}</D:owner></D:lockinfo>')
    with dav(server, name, password) as client:
        assert client.put("/f.txt", content=b"x").status_code == 201
        for method, body in (("PROPPATCH", proppatch), ("LOCK", lock), ("PROPFIND", f"<D:propfind xmlns:D='DAV:'>{nested}</D:propfind>")):
            response = client.request(method, "/f.txt", content=body.encode(), headers={"Depth": "0"})
            assert response.status_code == 400, (method, response.status_code, response.text[:200])
        # A property nested as deep as allowed is kept and read back whole.
        ok = "<x>" * 90 + "</x>" * 90
        body = (f'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><p xmlns="urn:t">{ok}</p></D:prop></D:set>'
                f'</D:propertyupdate>')
        assert client.request("PROPPATCH", "/f.txt", content=body.encode()).status_code == 207
        got = propfind(client, "/f.txt", "0", '<D:propfind xmlns:D="DAV:"><D:prop><p xmlns="urn:t"/></D:prop></D:propfind>')
        node, depth = got.find(".//{urn:t}p"), 0
        while node is not None and len(node):
            node, depth = node[0], depth + 1
        assert depth == 90
    assert "RecursionError" not in server.log()


@given(st.binary(max_size=60))
def test_request_paths_stay_in_the_tree(raw):
    scope = {"root_path": "/dav", "raw_path": b"/dav/" + raw, "path": "/dav/"}
    try:
        path = request_path(scope)
    except (DavError, InvalidInput):
        return
    assert path.startswith("/") and ".." not in path.split("/") and "\x00" not in path
