"""Users' sites at /~user/ over real HTTP and HTTPS: content types, validators and
conditional GET, ranges, gzip and br, no dotfiles, listings only when turned on, path
tricks refused, changes live at once; and the protocol-level fast path in-process."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import html
import http.client
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import brotli
import httpx
import pytest

from conftest import AgoraServer

PAGE = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Hello</title></head><body>\n"
        + "<p>Hello from a user's site, served by Agora.</p>\n" * 110 + "</body></html>\n").encode()


@dataclass
class Site:
    server: AgoraServer
    name: str
    password: str
    public: Path

    def write(self, relative: str, data: bytes) -> Path:
        """Put a file into the site as an upload would: whole, then renamed into place."""
        path = self.public / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path


@pytest.fixture
def site(server: AgoraServer) -> Site:
    name, password = server.create_user()
    public = server.data_dir / "files" / name / "public"
    public.mkdir(parents=True)
    site = Site(server, name, password, public)
    site.write("index.html", PAGE)
    return site


def raw_get(server: AgoraServer, target: str, headers: dict[str, str] | None = None, *, method: str = "GET",
            https: bool = False) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with the target sent exactly as given (httpx would normalize ``..``)
    and the body as sent (httpx would decode gzip and br)."""
    if https:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", server.ports["https"], context=context, timeout=30)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def etag_of(path: Path) -> str:
    st = os.stat(path)
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def test_a_page_is_served_with_its_type_and_validators(site: Site):
    index = site.public / "index.html"
    for https in (False, True):
        # httpx asks for br and gzip unless told otherwise; the stored file's ETag is the identity one's.
        with site.server.client(https=https) as http_client:
            http_client.headers["Accept-Encoding"] = "identity"
            for path in (f"/~{site.name}/", f"/~{site.name}/index.html"):
                response = http_client.get(path)
                assert response.status_code == 200, response.text
                assert response.content == PAGE
                assert response.headers["content-type"] == "text/html; charset=utf-8"
                assert response.headers["etag"] == etag_of(index)
                assert response.headers["last-modified"] == formatdate(os.stat(index).st_mtime, usegmt=True)
                assert response.headers["accept-ranges"] == "bytes"
                assert response.headers["cache-control"] == "no-cache"
                # The page runs in an opaque origin: no access to the UI's cookies or pages.
                csp = response.headers["content-security-policy"]
                assert csp.startswith("sandbox ") and "allow-scripts" in csp
                assert "allow-same-origin" not in csp
                assert response.headers["x-content-type-options"] == "nosniff"

    site.write("style/site.css", b"body { color: #123456; }\n")
    site.write("logo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    site.write("notes.txt", "ünïcode\n".encode())
    site.write("data.unknownext", b"\x00\x01")
    expected = {"style/site.css": "text/css; charset=utf-8", "logo.png": "image/png",
                "notes.txt": "text/plain; charset=utf-8", "data.unknownext": "application/octet-stream"}
    with site.server.client() as http_client:
        for path, kind in expected.items():
            response = http_client.get(f"/~{site.name}/{path}")
            assert response.status_code == 200
            assert response.headers["content-type"] == kind
            assert response.content == (site.public / path).read_bytes()


def test_conditional_get(site: Site):
    url = f"/~{site.name}/"
    with site.server.client() as http_client:
        first = http_client.get(url)
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        for headers in ({"If-None-Match": etag}, {"If-None-Match": f"W/{etag}"},
                        {"If-None-Match": f'"other", {etag}'}, {"If-None-Match": "*"},
                        {"If-Modified-Since": modified}):
            response = http_client.get(url, headers=headers)
            assert response.status_code == 304, headers
            assert response.content == b""
            assert response.headers["etag"] == etag
        assert http_client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        assert http_client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
        # If-None-Match decides alone when both are sent.
        both = http_client.get(url, headers={"If-None-Match": '"other"', "If-Modified-Since": modified})
        assert both.status_code == 200 and both.content == PAGE
        head = http_client.head(url, headers={"If-None-Match": etag})
        assert head.status_code == 304


def test_ranges(site: Site):
    url = f"/~{site.name}/index.html"
    size = len(PAGE)
    with site.server.client() as http_client:
        cases = {"bytes=0-9": (0, 9), "bytes=-5": (size - 5, size - 1), "bytes=100-": (100, size - 1),
                 "bytes=10-99999999": (10, size - 1)}
        for header, (first, last) in cases.items():
            response = http_client.get(url, headers={"Range": header})
            assert response.status_code == 206, header
            assert response.content == PAGE[first:last + 1]
            assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert response.headers["content-length"] == str(last - first + 1)
        unsatisfiable = http_client.get(url, headers={"Range": f"bytes={size}-"})
        assert unsatisfiable.status_code == 416
        assert unsatisfiable.headers["content-range"] == f"bytes */{size}"
        # Several ranges, a stale If-Range and a malformed header all get the whole file.
        for headers in ({"Range": "bytes=0-1,5-6"}, {"Range": "bytes=0-9", "If-Range": '"stale"'},
                        {"Range": "pages=1-2"}):
            response = http_client.get(url, headers=headers)
            assert response.status_code == 200 and response.content == PAGE, headers
        etag = http_client.get(url, headers={"Accept-Encoding": "identity"}).headers["etag"]
        fresh = http_client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert fresh.status_code == 206 and fresh.content == PAGE[:10]


def test_a_range_header_with_foreign_digits_is_ignored(site: Site):
    # Latin-1 has superscript digits that str.isdigit() accepts and int() refuses.
    url = f"/~{site.name}/index.html"
    for _ in range(2):  # a miss through the app, then a hit on the fast path
        for value in ("bytes=\u00b2-", "bytes=0-\u00b3", "bytes=\u00b9\u00b2"):
            status, _, body = raw_get(site.server, url, {"Range": value, "Accept-Encoding": "identity"})
            assert status == 200 and body == PAGE, value


def test_a_file_has_one_content_type_over_every_protocol(site: Site):
    """/~user/, the files API, a share link and WebDAV (GET and PROPFIND) agree."""
    names = ["page.html", "style.css", "app.js", "module.mjs", "data.json", "feed.xml", "drawing.svg",
             "notes.txt", "readme.md", "table.csv", "script.py", "photo.png", "doc.pdf", "font.woff2",
             "app.webmanifest", "code.wasm", "archive.tar.gz", "drawing.svgz", "blob.unknownext", "noext"]
    for name in names:
        site.write(name, b"some bytes\n")
    server = site.server
    token = server.login(site.name, site.password)
    with server.client(token) as api, server.client() as anonymous, \
            httpx.Client(base_url=server.url + "/dav", auth=(site.name, site.password), timeout=30) as dav:
        listing = dav.request("PROPFIND", "/public/", headers={"Depth": "1"})
        assert listing.status_code == 207, listing.text
        propfind = {}
        for response in re.findall(rb"<D:response>.*?</D:response>", listing.content, re.S):
            href = re.search(rb"<D:href>/dav/public/([^<]*)</D:href>", response)
            kind = re.search(rb"<D:getcontenttype>([^<]*)</D:getcontenttype>", response)
            if href and kind:
                propfind[href.group(1).decode()] = html.unescape(kind.group(1).decode())
        for name in names:
            kinds = {"site": anonymous.get(f"/~{site.name}/{name}").headers["content-type"],
                     "api": api.get(f"/api/v1/files/content/public/{name}").headers["content-type"],
                     "dav": dav.get(f"/public/{name}").headers["content-type"],
                     "propfind": propfind[name]}
            if name in ("page.html", "data.json", "doc.pdf"):
                link = api.post("/api/v1/files/shares", json={"path": f"/public/{name}"})
                assert link.status_code == 201, link.text
                kinds["share"] = anonymous.get(f"/s/{link.json()['token']}").headers["content-type"]
            assert len(set(kinds.values())) == 1, (name, kinds)
            kind, _, charset = kinds["site"].partition("; ")
            assert (charset == "charset=utf-8") == (kind.startswith("text/") or kind in (
                "application/json", "application/xml", "image/svg+xml")), (name, kinds["site"])
        # Pinned, not left to the machine's mimetypes tables.
        assert anonymous.get(f"/~{site.name}/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
        assert anonymous.get(f"/~{site.name}/data.json").headers["content-type"] == "application/json; charset=utf-8"
        assert anonymous.get(f"/~{site.name}/drawing.svg").headers["content-type"] == "image/svg+xml; charset=utf-8"
        # Compressed bytes are never labelled as what they unpack to.
        assert anonymous.get(f"/~{site.name}/drawing.svgz").headers["content-type"] == "application/octet-stream"
        assert anonymous.get(f"/~{site.name}/archive.tar.gz").headers["content-type"] == "application/gzip"


def test_gzip_and_br_for_text(site: Site):
    server = site.server
    target = f"/~{site.name}/index.html"
    _, plain_headers, _ = raw_get(server, target)
    for accept, encoding, decode in (("br", "br", brotli.decompress), ("gzip, deflate", "gzip", gzip.decompress),
                                     ("gzip, deflate, br", "br", brotli.decompress),
                                     ("br;q=0, gzip", "gzip", gzip.decompress)):
        for attempt in range(2):  # made on the first request, kept for the next
            status, headers, body = raw_get(server, target, {"Accept-Encoding": accept})
            assert status == 200
            assert headers["content-encoding"] == encoding, accept
            assert headers["vary"].lower() == "accept-encoding"
            assert int(headers["content-length"]) == len(body) < len(PAGE)
            assert decode(body) == PAGE
            # Each encoding is its own representation, with its own ETag.
            assert headers["etag"] != plain_headers["etag"]
            status, _, _ = raw_get(server, target, {"Accept-Encoding": accept, "If-None-Match": headers["etag"]})
            assert status == 304
    status, headers, body = raw_get(server, target, {"Accept-Encoding": "identity"})
    assert "content-encoding" not in headers and body == PAGE
    # A range is of the identity bytes.
    status, headers, body = raw_get(server, target, {"Accept-Encoding": "br", "Range": "bytes=0-9"})
    assert status == 206 and body == PAGE[:10] and "content-encoding" not in headers
    # Images are not compressed.
    site.write("photo.png", b"\x89PNG" + os.urandom(4096))
    status, headers, body = raw_get(server, f"/~{site.name}/photo.png", {"Accept-Encoding": "gzip, br"})
    assert status == 200 and "content-encoding" not in headers


def test_dotfiles_are_never_served(site: Site):
    site.write(".htaccess", b"secret")
    site.write(".git/config", b"secret")
    site.write("docs/.env", b"secret")
    site.write("docs/page.html", b"fine")
    with site.server.client() as http_client:
        assert http_client.get(f"/~{site.name}/docs/page.html").content == b"fine"
        for path in (".htaccess", ".git/config", ".git/", "docs/.env", "docs/.env/"):
            response = http_client.get(f"/~{site.name}/{path}")
            assert response.status_code == 404, path
            assert b"secret" not in response.content


def _login(server: AgoraServer, name: str, password: str) -> tuple[httpx.Client, str]:
    http_client = server.client()
    http_client.headers["Accept"] = "text/html"
    form = http_client.get("/login")
    token = html.unescape(re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1))
    response = http_client.post("/login", data={"username": name, "password": password, "csrf_token": token,
                                                "next": "/files"})
    assert response.status_code == 303, response.text
    files_page = http_client.get("/files")
    csrf = html.unescape(re.search(r'name="csrf_token" value="([^"]+)"', files_page.text).group(1))
    return http_client, csrf


def test_listings_only_when_turned_on(site: Site):
    site.write("gallery/one.jpg", b"1")
    site.write("gallery/two words.txt", b"2")
    site.write("gallery/.private", b"3")
    (site.public / "gallery" / "sub").mkdir()
    url = f"/~{site.name}/gallery/"
    with site.server.client() as http_client:
        assert http_client.get(url).status_code == 404
        ui, csrf = _login(site.server, site.name, site.password)
        try:
            assert ui.post("/files/site", data={"csrf_token": csrf, "listings": "on"}).status_code == 303
            listing = http_client.get(url)
            assert listing.status_code == 200
            assert listing.headers["content-type"] == "text/html; charset=utf-8"
            assert 'href="one.jpg"' in listing.text and 'href="two%20words.txt"' in listing.text
            assert 'href="sub/"' in listing.text
            assert ".private" not in listing.text
            # A folder with an index.html still shows it.
            assert http_client.get(f"/~{site.name}/").content == PAGE
            assert ui.post("/files/site", data={"csrf_token": csrf}).status_code == 303
            assert http_client.get(url).status_code == 404
        finally:
            ui.close()


def test_unknown_users_redirects_and_not_found(site: Site):
    site.write("sub/index.html", b"sub page")
    site.write("file.txt", b"a file")
    with site.server.client() as http_client:
        for path in ("/~nobody-here/", "/~nobody-here", "/~", "/~/", "/~Upper/", f"/~{site.name}/missing.html",
                     f"/~{site.name}/file.txt/", f"/~{site.name}/sub/missing/"):
            response = http_client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert "Not Found" in response.text
        home = http_client.get(f"/~{site.name}")
        assert home.status_code == 301 and home.headers["location"] == f"/~{site.name}/"
        sub = http_client.get(f"/~{site.name}/sub?x=1")
        assert sub.status_code == 301 and sub.headers["location"] == f"/~{site.name}/sub/?x=1"
        assert http_client.get(f"/~{site.name}/sub/").content == b"sub page"
        refused = http_client.post(f"/~{site.name}/")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        head = http_client.head(f"/~{site.name}/", headers={"Accept-Encoding": "identity"})
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(PAGE))


def test_path_tricks_and_symlinks_are_refused(site: Site, tmp_path: Path):
    server = site.server
    other, _ = server.create_user()
    private = server.data_dir / "files" / other / "private.txt"
    private.parent.mkdir(parents=True, exist_ok=True)
    private.write_bytes(b"private of another user")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"outside the tree")
    os.symlink(outside, site.public / "linked-dir")
    os.symlink(outside / "secret.txt", site.public / "linked-file.txt")
    os.symlink(site.public / "index.html", site.public / "inner-link.html")
    # A symlinked public folder is refused too.
    other_public = server.data_dir / "files" / other / "public"
    os.symlink(outside, other_public)
    name = site.name
    for target in (f"/~{name}/../../etc/passwd", f"/~{name}/%2e%2e/%2e%2e/etc/passwd",
                   f"/~{name}/..%2f..%2f{other}%2fprivate.txt", f"/~{name}/%2e%2e/{other}/private.txt",
                   f"/~{name}/./../{other}/private.txt", f"/~{name}/linked-dir/secret.txt",
                   f"/~{name}/linked-file.txt", f"/~{name}/inner-link.html", f"/~{name}/linked-dir/",
                   f"/~{other}/secret.txt", f"/~{other}/", f"/~{name}/%00", f"/~{name}/a%5c..%5cb",
                   f"/~{name}/index.html%00.txt"):
        status, _, body = raw_get(server, target)
        assert status == 404, target
        assert b"outside the tree" not in body and b"private of another" not in body


def test_changes_are_live_at_once(site: Site):
    """Uploads through Agora (here the API; FTP and WebDAV use the same store) show at
    once; a file changed behind Agora's back (another node, another tool) within
    sites.RECHECK."""
    from agora.files.sites import RECHECK

    url = f"/~{site.name}/live.html"
    content = "/api/v1/files/content/public/live.html"
    token = site.server.login(site.name, site.password)
    with site.server.client() as http_client, site.server.client(token) as api:
        assert api.put(content, content=b"version one").status_code in (200, 201)
        first = http_client.get(url)
        assert first.content == b"version one"
        assert http_client.get(url).content == b"version one"  # now kept in memory
        assert api.put(content, content=b"version two").status_code in (200, 201)  # same size
        second = http_client.get(url)
        assert second.content == b"version two"
        assert second.headers["etag"] != first.headers["etag"]
        assert http_client.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 200
        assert api.delete(content).status_code in (200, 204)
        assert http_client.get(url).status_code == 404
        assert api.put(content, content=b"back").status_code in (200, 201)
        assert http_client.get(url).content == b"back"
        # Behind Agora's back: a new version, then a symlink in its place.
        site.write("live.html", b"other tool")
        time.sleep(RECHECK + 0.2)
        assert http_client.get(url).content == b"other tool"
        (site.public / "live.html").unlink()
        os.symlink(site.public / "index.html", site.public / "live.html")
        time.sleep(RECHECK + 0.2)
        assert http_client.get(url).status_code == 404


def test_a_disabled_users_site_goes_dark(site: Site):
    from agora.files.sites import OWNER_TTL

    with site.server.client() as http_client, site.server.admin() as admin:
        assert http_client.get(f"/~{site.name}/").status_code == 200
        assert admin.patch(f"/api/v1/users/{site.name}", json={"disabled": True}).status_code == 200
        deadline = time.monotonic() + OWNER_TTL + 3
        while http_client.get(f"/~{site.name}/").status_code == 200:
            assert time.monotonic() < deadline, "still served after the owner was disabled"
            time.sleep(0.25)
        assert admin.patch(f"/api/v1/users/{site.name}", json={"disabled": False}).status_code == 200


def test_a_page_uploaded_through_the_api_is_live(site: Site):
    token = site.server.login(site.name, site.password)
    with site.server.client(token) as api, site.server.client() as http_client:
        response = api.put("/api/v1/files/content/public/api.html", content=b"<p>from the API</p>")
        if response.status_code == 404 and "problem" not in response.headers.get("content-type", ""):
            pytest.skip("the files API is not mounted")
        assert response.status_code in (200, 201), response.text
        page = http_client.get(f"/~{site.name}/api.html")
        assert page.content == b"<p>from the API</p>"
        assert page.headers["etag"] == etag_of(site.public / "api.html")
        assert api.put("/api/v1/files/content/public/api.html", content=b"<p>replaced</p>").status_code in (200, 201)
        assert http_client.get(f"/~{site.name}/api.html").content == b"<p>replaced</p>"


def test_large_files_stream_with_ranges(site: Site):
    data = os.urandom(3 * 1024 * 1024 + 123)
    site.write("big.bin", data)
    url = f"/~{site.name}/big.bin"
    for https in (False, True):
        with site.server.client(https=https) as http_client:
            for _ in range(2):
                response = http_client.get(url)
                assert response.status_code == 200
                assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()
            middle = http_client.get(url, headers={"Range": "bytes=1048570-2097160"})
            assert middle.status_code == 206 and middle.content == data[1048570:2097161]
            head = http_client.head(url)
            assert head.headers["content-length"] == str(len(data)) and head.content == b""
    # A client that goes away mid-download does not trouble the server.
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", site.server.ports["http"])) as sock:
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    with site.server.client() as http_client:
        assert http_client.get(url, headers={"Range": "bytes=0-3"}).content == data[:4]
    # A large text file is compressed too.
    text = ("line of text %d\n" * 200_000 % tuple(range(200_000))).encode()
    site.write("big.txt", text)
    status, headers, body = raw_get(site.server, f"/~{site.name}/big.txt", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(body) == text


# -- the fast path, in-process: kept pages answered by the protocol -------------------


@contextlib.asynccontextmanager
async def protocol_server(tmp_path: Path, keep_alive: int = 5):
    """uvicorn with the sites protocol on a socket, as web/service.py drives it; yields
    (runtime, protocol class, port) with user carol's site holding PAGE."""
    import uvicorn

    from agora import config as configuration
    from agora.core.runtime import Runtime
    from agora.files.sites import SitesFastPath
    from agora.web.app import create_app

    runtime = await Runtime.open(configuration.load({"data_dir": str(tmp_path / "data")}, environ={}))
    app = SitesFastPath(create_app(runtime), runtime)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, http=app.http_protocol, lifespan="off", log_config=None,
                                           access_log=False, timeout_keep_alive=keep_alive))
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)
    await server.startup(sockets=[sock])
    try:
        await runtime.identity.create_user("carol", "password-123")
        public = tmp_path / "data" / "files" / "carol" / "public"
        public.mkdir(parents=True)
        (public / "index.html").write_bytes(PAGE)
        yield runtime, app.http_protocol, sock.getsockname()[1]
    finally:
        await server.shutdown()
        await runtime.close()


class Exchange:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Exchange":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def __call__(self, request: bytes, count: int = 1) -> list[tuple[bytes, bytes]]:
        self.writer.write(request)
        answers = []
        for _ in range(count):
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head)
            body = await self.reader.readexactly(int(length.group(1))) if length else b""
            answers.append((head, body))
        return answers

    async def closed_within(self, seconds: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), seconds) == b""
        except asyncio.TimeoutError:
            return False


GET = b"GET /~carol/ HTTP/1.1\r\nHost: x\r\n\r\n"


def test_kept_pages_are_answered_by_the_protocol(tmp_path: Path):
    from agora.files.access import user_files
    from agora.files.sites import RECHECK

    async def scenario() -> None:
        async with protocol_server(tmp_path) as (runtime, protocol, port):
            exchange = await Exchange.open(port)
            before = protocol.answered
            [(head, body)] = await exchange(GET)  # a miss: through the app, and kept
            assert head.startswith(b"HTTP/1.1 200") and body == PAGE
            assert protocol.answered == before
            [(head, body)] = await exchange(GET)
            assert head.startswith(b"HTTP/1.1 200") and body == PAGE and b"content-security-policy: sandbox" in head
            assert protocol.answered == before + 1
            # Pipelined: a kept page, an app route, a kept page again, answered in order.
            answers = await exchange(GET + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + GET, 3)
            assert [body for _, body in answers][0::2] == [PAGE, PAGE]
            assert b'"status":"ok"' in answers[1][1]
            etag = re.search(rb"etag: (\"[^\"]+\")", head).group(1)
            [(head, _)] = await exchange(b"GET /~carol/ HTTP/1.1\r\nHost: x\r\nIf-None-Match: " + etag + b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 304")
            # Compression still to do goes to the app, which sees the request's headers.
            gzipped = b"GET /~carol/ HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
            answered = protocol.answered
            [(head, body)] = await exchange(gzipped)
            assert b"content-encoding: gzip" in head and gzip.decompress(body) == PAGE
            assert protocol.answered == answered
            [(head, body)] = await exchange(gzipped)  # now kept compressed
            assert b"content-encoding: gzip" in head and protocol.answered == answered + 1
            # Answers given here are counted in the metrics like the app's.
            metrics = runtime.metrics.render().decode()
            count = re.search(r'agora_http_requests_total\{method="GET",route="/~\{user\}/\{path\}",status="200"\} '
                              r'(\d+)', metrics)
            assert count and int(count.group(1)) >= 6
            assert 'agora_http_request_duration_seconds_count{method="GET",route="/~{user}/{path}"}' in metrics
            # Replaced through the store (as any upload): the kept copy is not used.
            carol = await runtime.identity.get_user("carol")
            user_files(runtime, carol).write_bytes("/public/index.html", b"new version")
            [(head, body)] = await exchange(GET)
            assert body == b"new version"
            # Replaced behind Agora's back: seen once the kept copy is looked at again.
            (tmp_path / "data" / "files" / "carol" / "public" / "index.html").write_bytes(b"other tool")
            await asyncio.sleep(RECHECK + 0.2)
            [(head, body)] = await exchange(GET)
            assert body == b"other tool"
            exchange.writer.close()

    asyncio.run(scenario())


def test_keep_alive_timeout_after_answers_given_by_the_protocol(tmp_path: Path):
    """The protocol's lazy keep-alive timer: idle connections close after one to two
    periods, busy ones stay open, and the app's responses keep uvicorn's own timer."""

    async def scenario() -> None:
        async with protocol_server(tmp_path, keep_alive=1) as (_, protocol, port):
            idle, busy, mixed = [await Exchange.open(port) for _ in range(3)]
            await idle(GET)  # kept now
            before = protocol.answered
            for exchange in (idle, busy, mixed):
                assert (await exchange(GET))[0][1] == PAGE
            assert protocol.answered == before + 3
            await mixed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            # Requests every 0.3 s for 2.4 s: more than two periods, the connection stays.
            for _ in range(8):
                await asyncio.sleep(0.3)
                assert (await busy(GET))[0][1] == PAGE
            assert await idle.closed_within(0.5)
            assert await mixed.closed_within(0.5)
            assert not await busy.closed_within(0.2)
            assert await busy.closed_within(2.5)
            # A request begun but unfinished is not cut by the timer.
            slow = await Exchange.open(port)
            await slow(GET)
            slow.writer.write(b"GET /~carol/ HTTP/1.1\r\n")
            for _ in range(3):
                await asyncio.sleep(0.5)
                slow.writer.write(b"X-Slow: 1\r\n")
            slow.writer.write(b"\r\n")
            head = await slow.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")

    asyncio.run(scenario())
