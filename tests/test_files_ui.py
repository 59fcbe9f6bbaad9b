"""The file browser at /files over real HTTP: browse, upload (raw and multipart),
download, mkdir, rename, delete, share links and site settings through the session
routes; CSRF refused when missing; one user cannot reach another's files. And, when
Chromium is there, an upload through the page itself."""

from __future__ import annotations

import html
import os
import re
import secrets
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import AgoraServer
from test_browser import browser, page  # noqa: F401 - the shared Chromium fixtures

HTMX = {"HX-Request": "true"}


class Browser:
    """A logged-in browser-like client: cookies kept, redirects not followed."""

    def __init__(self, server: AgoraServer, name: str, password: str):
        self.server = server
        self.name = name
        self.http = server.client()
        self.http.headers["Accept"] = "text/html"
        form = self.http.get("/login")
        response = self.http.post("/login", data={"username": name, "password": password,
                                                  "csrf_token": self._csrf(form.text), "next": "/files"})
        assert response.status_code == 303, response.text
        self.csrf = self._csrf(self.http.get("/files").text)

    @staticmethod
    def _csrf(page: str) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, page[:2000]
        return html.unescape(match.group(1))

    @property
    def tree(self) -> Path:
        return self.server.data_dir / "files" / self.name

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True, htmx: bool = False) -> httpx.Response:
        data = dict(data)
        if csrf:
            data["csrf_token"] = self.csrf
        return self.http.post(path, data=data, headers=HTMX if htmx else {})

    def upload(self, folder: str, name: str, content: bytes, *, csrf: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/octet-stream"}
        token = self.csrf if csrf is None else csrf
        if token:
            headers["X-CSRF-Token"] = token
        return self.http.post("/files/upload", params={"dir": folder, "name": name}, content=content,
                              headers=headers)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def user(server: AgoraServer) -> Iterator[Browser]:
    name, password = server.create_user()
    browser = Browser(server, name, password)
    yield browser
    browser.close()


def test_the_browser_needs_a_login_and_is_on_the_dashboard(server: AgoraServer, user: Browser):
    with server.client() as anonymous:
        response = anonymous.get("/files", headers={"Accept": "text/html"})
        assert response.status_code == 303 and response.headers["location"] == "/login?next=/files"
        assert anonymous.post("/files/upload", params={"dir": "/", "name": "x"}, content=b"x",
                              headers={"Content-Type": "application/octet-stream"}).status_code == 401
    dashboard = user.http.get("/dashboard").text
    assert re.search(r'id="card-files".*?href="/files"', dashboard, re.S)
    page = user.http.get("/files").text
    assert 'id="upload-form"' in page and 'id="quota"' in page and f'href="/~{user.name}/"' in page
    assert "/static/files/browser.js" in page and "/static/files/browser.css" in page
    for asset in ("/static/files/browser.js", "/static/files/browser.css"):
        assert user.http.get(asset).status_code == 200


def test_upload_browse_download(user: Browser):
    data = os.urandom(200_000)
    response = user.upload("/", "report final.bin", data)
    assert response.status_code == 201, response.text
    assert response.json() == {"path": "/report final.bin", "size": len(data)}
    assert (user.tree / "report final.bin").read_bytes() == data
    page = user.http.get("/files").text
    assert "report final.bin" in page and "195.3 KiB" in page
    download = user.http.get("/files/download", params={"path": "/report final.bin"})
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-disposition"].startswith("attachment")
    partial = user.http.get("/files/download", params={"path": "/report final.bin"}, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.content == data[10:20]
    # Replacing keeps one file; the quota bar follows.
    assert user.upload("/", "report final.bin", b"short").status_code == 201
    assert (user.tree / "report final.bin").read_bytes() == b"short"
    listing = user.http.get("/files/listing", params={"dir": "/"}).text
    assert "5 bytes of" in listing

    # Without JavaScript: a multipart form, answered with the folder.
    assert user.post("/files/mkdir", {"dir": "/", "name": "docs"}).status_code == 303
    response = user.http.post("/files/upload", data={"csrf_token": user.csrf, "dir": "/docs"},
                              files=[("files", ("a.txt", b"alpha")), ("files", ("b.txt", b"beta"))])
    assert response.status_code == 303 and response.headers["location"] == "/files?dir=/docs"
    assert (user.tree / "docs" / "a.txt").read_bytes() == b"alpha"
    assert (user.tree / "docs" / "b.txt").read_bytes() == b"beta"
    docs = user.http.get("/files", params={"dir": "/docs"}).text
    assert "a.txt" in docs and '<a href="/files">Home</a>' in docs and '<span aria-current="page">docs</span>' in docs


def test_mkdir_rename_delete(user: Browser):
    response = user.post("/files/mkdir", {"dir": "/", "name": "photos"}, htmx=True)
    assert response.status_code == 200 and "photos/" in response.text and "Folder /photos created." in response.text
    assert (user.tree / "photos").is_dir()
    assert user.upload("/photos", "cat.jpg", b"meow").status_code == 201
    response = user.post("/files/rename", {"path": "/photos/cat.jpg", "name": "tiger.jpg"}, htmx=True)
    assert response.status_code == 200 and "tiger.jpg" in response.text
    assert (user.tree / "photos" / "tiger.jpg").read_bytes() == b"meow"
    assert not (user.tree / "photos" / "cat.jpg").exists()
    response = user.post("/files/rename", {"path": "/photos", "name": "pictures"})
    assert response.status_code == 303 and response.headers["location"] == "/files"
    assert (user.tree / "pictures" / "tiger.jpg").exists()
    response = user.post("/files/delete", {"path": "/pictures"}, htmx=True)
    assert response.status_code == 200 and "pictures" not in response.text.replace("Deleted /pictures.", "")
    assert not (user.tree / "pictures").exists()

    # Mistakes come back as messages (htmx) or an error page, never a stack trace.
    exists = user.post("/files/mkdir", {"dir": "/", "name": "again"}, htmx=True)
    again = user.post("/files/mkdir", {"dir": "/", "name": "again"}, htmx=True)
    assert exists.status_code == 200 and again.status_code == 409
    assert again.headers["HX-Retarget"] == "#flash" and "already exists" in again.text
    for name in ("a/b", "..", "", "."):
        bad = user.post("/files/mkdir", {"dir": "/", "name": name})
        assert bad.status_code == 422, name
        assert "Traceback" not in bad.text and "<html" in bad.text
    missing = user.post("/files/delete", {"path": "/no-such-file"})
    assert missing.status_code == 404 and "Traceback" not in missing.text


def test_csrf_is_required(user: Browser):
    assert user.upload("/", "x.txt", b"x", csrf="").status_code == 403
    assert user.upload("/", "x.txt", b"x", csrf="wrong-" + secrets.token_hex(8)).status_code == 403
    assert not (user.tree / "x.txt").exists()
    multipart = user.http.post("/files/upload", data={"dir": "/"}, files=[("files", ("m.txt", b"m"))])
    assert multipart.status_code == 403 and not (user.tree / "m.txt").exists()
    (user.tree / "keep").mkdir(parents=True, exist_ok=True)
    for path, data in (("/files/mkdir", {"dir": "/", "name": "new"}), ("/files/rename", {"path": "/keep", "name": "k2"}),
                       ("/files/delete", {"path": "/keep"}), ("/files/share", {"path": "/keep"}),
                       ("/files/site", {"listings": "on"})):
        assert user.post(path, data, csrf=False).status_code == 403, path
        assert user.post(path, data, csrf=False, htmx=True).status_code == 403, path
    assert (user.tree / "keep").is_dir() and not (user.tree / "new").exists() and not (user.tree / "k2").exists()


def test_quota_and_upload_limits(server: AgoraServer):
    name, password = server.create_user()
    with server.admin() as admin:
        assert admin.patch(f"/api/v1/users/{name}", json={"quota_bytes": 1000}).status_code == 200
    user = Browser(server, name, password)
    try:
        assert user.upload("/", "fits.bin", b"x" * 600).status_code == 201
        refused = user.upload("/", "too-big.bin", b"x" * 600)
        assert refused.status_code == 413 and "quota" in refused.json()["detail"]
        assert not (user.tree / "too-big.bin").exists()
        leftovers = list((server.data_dir / "files" / ".uploads").glob(f"{name}.*"))
        assert leftovers == []
        assert "600 bytes of 1000 bytes used (60%)" in user.http.get("/files").text
    finally:
        user.close()


def test_one_user_cannot_reach_another(server: AgoraServer, user: Browser):
    victim_name, victim_password = server.create_user()
    victim = Browser(server, victim_name, victim_password)
    try:
        assert victim.upload("/", "secret.txt", b"victim's secret").status_code == 201
        tricks = [f"/../{victim_name}", f"../{victim_name}", f"/{victim_name}/..", "/%2e%2e"]
        for folder in tricks:
            response = user.http.get("/files", params={"dir": folder})
            assert response.status_code in (404, 422), folder
            assert "secret.txt" not in response.text
        for path in (f"/../{victim_name}/secret.txt", f"../{victim_name}/secret.txt", "/secret.txt"):
            response = user.http.get("/files/download", params={"path": path})
            assert response.status_code in (404, 422), path
            assert b"victim's secret" not in response.content
            assert user.post("/files/delete", {"path": path}).status_code in (404, 422)
            assert user.post("/files/rename", {"path": path, "name": "mine.txt"}).status_code in (404, 422)
            assert user.post("/files/share", {"path": path}).status_code in (404, 422)
        assert user.upload(f"/../{victim_name}", "planted.txt", b"x").status_code == 422
        assert user.upload("/", "../planted.txt", b"x").status_code == 422
        assert (victim.tree / "secret.txt").read_bytes() == b"victim's secret"
        assert not (victim.tree / "planted.txt").exists()
        # The victim's share links are not the user's to revoke.
        victim.post("/files/share", {"path": "/secret.txt"})
        links = re.findall(r"/files/shares/([0-9a-f]+)/revoke", victim.http.get("/files").text)
        assert links
        assert user.post(f"/files/shares/{links[0]}/revoke", {}).status_code == 404
    finally:
        victim.close()


def test_share_links(server: AgoraServer, user: Browser):
    assert user.upload("/", "shared.txt", b"for everyone").status_code == 201
    response = user.post("/files/share", {"path": "/shared.txt", "expires_days": "3"}, htmx=True)
    assert response.status_code == 200
    url = html.unescape(re.search(r'id="share-url" class="mono" value="([^"]+)"', response.text).group(1))
    assert url.startswith(server.url + "/s/")
    with httpx.Client(verify=False) as anonymous:
        assert anonymous.get(url).content == b"for everyone"
    page = user.http.get("/files").text
    link_id = re.search(r"/files/shares/([0-9a-f]+)/revoke", page).group(1)
    assert "/shared.txt" in page
    assert user.post(f"/files/shares/{link_id}/revoke", {}, htmx=True).status_code == 200
    with httpx.Client(verify=False) as anonymous:
        assert anonymous.get(url).status_code == 404
    assert user.post("/files/share", {"path": "/shared.txt", "expires_days": "9999"}).status_code == 422
    # Without htmx the whole page comes back, showing the link.
    plain = user.post("/files/share", {"path": "/shared.txt", "password": "open sesame"})
    assert plain.status_code == 201 and 'id="share-url"' in plain.text and "with the password" in plain.text


def test_site_settings(server: AgoraServer, user: Browser):
    page = user.http.get("/files").text
    assert "You have no <code>/public</code> folder yet." in page
    response = user.post("/files/site", {"listings": "on", "create": "1"}, htmx=True)
    assert response.status_code == 200 and "Site settings saved." in response.text and "checked" in response.text
    assert (user.tree / "public").is_dir()
    (user.tree / "public" / "a.txt").write_bytes(b"a")
    with server.client() as visitor:
        assert 'href="a.txt"' in visitor.get(f"/~{user.name}/").text
        user.post("/files/site", {}, htmx=True)
        assert visitor.get(f"/~{user.name}/").status_code == 404


# -- in a real browser ------------------------------------------------------------------


@pytest.mark.browser
def test_upload_through_the_page(server: AgoraServer, page, tmp_path: Path):
    name, password = server.create_user()
    page.goto(server.url + "/files")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Log in')")
    page.wait_for_url(server.url + "/files")
    # Errors show in the layout's message area (the script shares agora.js's helper).
    page.click("#upload-button")
    page.locator("#flash >> text=Choose at least one file to upload.").wait_for()
    upload = tmp_path / "from the browser.bin"
    upload.write_bytes(os.urandom(3 * 1024 * 1024))
    page.set_input_files("#upload-form input[type=file]", str(upload))
    page.locator("#uploads li.done").wait_for()
    page.locator("#entries >> text=from the browser.bin").wait_for()
    stored = server.data_dir / "files" / name / "from the browser.bin"
    assert stored.read_bytes() == upload.read_bytes()

    page.fill("input[aria-label='New folder name']", "made here")
    page.click("button:has-text('New folder')")
    page.locator("#entries >> text=made here/").wait_for()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="from the browser.bin").locator("button:has-text('Delete')").click()
    page.locator("text=Deleted /from the browser.bin.").wait_for()
    assert not stored.exists()
    assert page.console_errors == []
