"""The web UI over real HTTP: login and logout, cookies, CSRF, tokens, admin pages, docs."""

from __future__ import annotations

import html
import re
import secrets
import socket

import httpx
import pytest

from conftest import AgoraServer

SESSION = "agora_session"


def find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in page:\n{text[:3000]}"
    return html.unescape(match.group(1))


def csrf_of(page: str) -> str:
    return find(r'name="csrf_token" value="([^"]+)"', page)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name, as sent (attributes included)."""
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


class UI:
    """A browser-like client: HTML accepted, cookies kept, redirects not followed."""

    def __init__(self, server: AgoraServer, *, https: bool = False, base_url: str | None = None):
        self.http = server.client(https=https)
        if base_url:
            self.http.base_url = base_url
        self.http.headers["Accept"] = "text/html,application/xhtml+xml"
        self.csrf = ""

    def __enter__(self) -> "UI":
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def get(self, path: str, **kwargs) -> httpx.Response:
        response = self.http.get(path, **kwargs)
        if 'name="csrf_token"' in response.text and response.url.path != "/login":
            self.csrf = csrf_of(response.text)
        return response

    def login(self, name: str, password: str, next: str | None = None) -> httpx.Response:
        form = self.http.get("/login" + (f"?next={next}" if next else ""))
        assert form.status_code == 200, form.text
        data = {"username": name, "password": password, "csrf_token": csrf_of(form.text),
                "next": find(r'name="next" value="([^"]*)"', form.text)}
        response = self.http.post("/login", data=data)
        if response.status_code == 303:
            self.get("/dashboard")
        return response

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None,
             htmx: bool = False) -> httpx.Response:
        data = dict(data or {})
        headers = {}
        token = self.csrf if csrf is None else csrf
        if htmx:
            headers = {"HX-Request": "true", "HX-Current-URL": str(self.http.base_url.join("/dashboard"))}
            if token:
                headers["X-CSRF-Token"] = token
        elif token:
            data["csrf_token"] = token
        return self.http.post(path, data=data, headers=headers)


@pytest.fixture
def admin_ui(server: AgoraServer):
    with UI(server) as ui:
        assert ui.login("admin", server.admin_password).status_code == 303
        yield ui


def api_me(server: AgoraServer, token: str) -> int:
    with server.client(token) as http:
        return http.get("/api/v1/me").status_code


# -- login, cookies, logout -----------------------------------------------------------


def test_root_and_pages_redirect_to_login_with_next(server: AgoraServer):
    with UI(server) as ui:
        assert ui.get("/").headers["location"] == "/login"
        response = ui.get("/tokens")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=/tokens"
        # An htmx request is told where to go by header, not by a redirect its XHR follows.
        response = ui.post("/tokens/abc/revoke", htmx=True, csrf="x")
        assert response.headers["HX-Redirect"].startswith("/login?next=")

        user, password = server.create_user()
        response = ui.login(user, password, next="/tokens")
        assert response.headers["location"] == "/tokens"
        assert ui.get("/").headers["location"] == "/dashboard"
        assert ui.get("/login").headers["location"] == "/dashboard"


def test_login_sets_a_strict_session_cookie(server: AgoraServer):
    user, password = server.create_user()
    with UI(server) as ui:
        form = ui.http.get("/login")
        login_cookie = set_cookies(form)["agora_csrf"]
        assert "HttpOnly" in login_cookie and "SameSite=lax" in login_cookie.replace("Lax", "lax")
        response = ui.login(user, password)
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        cookie = set_cookies(response)[SESSION]
        assert "HttpOnly" in cookie
        assert re.search(r"SameSite=lax", cookie, re.I)
        assert "Path=/" in cookie
        assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
        page = ui.get("/dashboard")
        assert page.status_code == 200
        assert f"Hello, {user}" in page.text
        assert page.headers["cache-control"] == "no-store"


def test_session_cookie_is_secure_on_https(server: AgoraServer):
    user, password = server.create_user()
    with UI(server, https=True) as ui:
        assert 'Secure' in set_cookies(ui.http.get("/login"))["agora_csrf"]
        response = ui.login(user, password)
        assert response.status_code == 303
        cookie = set_cookies(response)[SESSION]
        assert "Secure" in cookie and "HttpOnly" in cookie and re.search(r"SameSite=lax", cookie, re.I)
        assert ui.get("/dashboard").status_code == 200


def test_wrong_password_shows_an_error(server: AgoraServer):
    user, _ = server.create_user()
    with UI(server) as ui:
        response = ui.login(user, "not-the-password")
        assert response.status_code == 401
        assert "Wrong user name or password." in response.text
        assert SESSION not in set_cookies(response)
        assert f'value="{user}"' in response.text  # the name is kept, the password is not
        assert ui.get("/dashboard").status_code == 303


def test_login_form_needs_its_csrf_cookie(server: AgoraServer):
    user, password = server.create_user()
    with UI(server) as ui:
        form = ui.http.get("/login")
        token = csrf_of(form.text)
        ui.http.cookies.clear()
        response = ui.http.post("/login", data={"username": user, "password": password, "csrf_token": token})
        assert response.status_code == 403
        assert SESSION not in set_cookies(response)
        # A forged form with a token of its own choosing fails the same way.
        ui.http.cookies.set("agora_csrf", "y" * 43, path="/login")
        response = ui.http.post("/login", data={"username": user, "password": password, "csrf_token": "x" * 43})
        assert response.status_code == 403
        # The 403 page is a fresh form that works.
        assert ui.login(user, password).status_code == 303


def test_login_is_rate_limited_with_retry_after(make_server):
    server = make_server(env={"AGORA_IDENTITY_LOGIN_FREE_FAILURES": "1",
                              "AGORA_IDENTITY_LOGIN_BACKOFF_BASE": "60s"})
    user, password = server.create_user()
    with UI(server) as ui:
        assert ui.login(user, "wrong-password-1").status_code == 401
        assert ui.login(user, "wrong-password-2").status_code == 401
        response = ui.login(user, password)
        assert response.status_code == 429
        retry = int(response.headers["Retry-After"])
        assert 1 <= retry <= 60
        assert "Too many failed attempts. Try again in" in response.text
        assert SESSION not in set_cookies(response)


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: nothing is sent, a route is picked
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_plain_http_login_from_the_network_is_refused(make_server):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    server = make_server(args=("--bind", "0.0.0.0"))
    user, password = server.create_user()
    with UI(server, base_url=f"http://{address}:{server.ports['http']}") as ui:
        response = ui.login(user, password)
        assert response.status_code == 403
        assert "only over HTTPS" in response.text
    with UI(server, base_url=f"https://{address}:{server.ports['https']}") as ui:
        assert ui.login(user, password).status_code == 303


def test_open_redirects_are_not_followed(server: AgoraServer):
    user, password = server.create_user()
    for evil in ("https://evil.example", "//evil.example", "/\\evil.example", "/\t/evil.example",
                 "https:/evil.example", "javascript:alert(1)"):
        with UI(server) as ui:
            form = ui.http.get("/login", params={"next": evil})
            assert 'value="/dashboard"' in form.text
            response = ui.http.post("/login", data={"username": user, "password": password, "next": evil,
                                                    "csrf_token": csrf_of(form.text)})
            assert response.status_code == 303
            assert response.headers["location"] == "/dashboard", evil
            # Once logged in, /login?next= redirects too: it must stay on the site as well.
            assert ui.http.get("/login", params={"next": evil}).headers["location"] == "/dashboard"


def test_logout_ends_the_session(server: AgoraServer):
    user, password = server.create_user()
    with UI(server) as ui:
        ui.login(user, password)
        secret = ui.http.cookies[SESSION]
        assert ui.post("/logout", csrf="wrong").status_code == 403
        assert ui.get("/dashboard").status_code == 200  # a forged logout did nothing
        response = ui.post("/logout")
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert 'agora_session=""' in set_cookies(response)[SESSION]
    with UI(server) as replay:
        replay.http.cookies.set(SESSION, secret)
        response = replay.get("/dashboard")
        assert response.status_code == 303 and response.headers["location"].startswith("/login")


# -- CSRF -----------------------------------------------------------------------------


def test_posts_without_the_csrf_token_are_refused(server: AgoraServer, admin_ui: UI):
    user, password = server.create_user()
    name = "u" + secrets.token_hex(4)
    with UI(server) as ui:
        ui.login(user, password)
        for csrf, htmx in (("", False), ("wrong", False), ("", True), ("wrong", True),
                           (admin_ui.csrf, False)):  # another session's token is wrong too
            response = ui.post("/tokens", {"name": "sneaky"}, csrf=csrf, htmx=htmx)
            assert response.status_code == 403, (csrf, htmx)
            response = admin_ui.post("/admin/users", {"name": name, "password": "password-123"},
                                     csrf=csrf if csrf != admin_ui.csrf else ui.csrf, htmx=htmx)
            assert response.status_code == 403
        assert "security token" in response.text and "Traceback" not in response.text
        assert "sneaky" not in ui.get("/tokens").text
    with server.admin() as http:
        assert http.get(f"/api/v1/users/{name}").status_code == 404
    token = server.login(user, password)
    with server.client(token) as http:
        assert [t["name"] for t in http.get("/api/v1/tokens").json()] == ["test"]


# -- dashboard and tokens -------------------------------------------------------------


def test_dashboard_shows_every_service_and_the_account(server: AgoraServer, admin_ui: UI):
    page = admin_ui.get("/dashboard").text
    for service in ("web", "files", "mail", "bank", "sql"):
        assert f'id="card-{service}"' in page
    assert "Not available yet on this server." not in page  # every service is here
    for present in ("/files", "/mail", "/bank", "/sql"):
        assert f'href="{present}"' in page  # each service's card links to it
    assert "Hello, admin" in page and ">admin</span>" in page and "1 GiB" in page
    assert 'href="/admin/users"' in page
    user, password = server.create_user()
    with UI(server) as ui:
        ui.login(user, password)
        page = ui.get("/dashboard").text
        assert ">user</span>" in page and 'href="/admin/users"' not in page


def test_tokens_are_created_and_revoked_through_the_pages(server: AgoraServer):
    user, password = server.create_user()
    with UI(server) as ui:
        ui.login(user, password)
        assert "You have no tokens yet." in ui.get("/tokens").text
        response = ui.post("/tokens", {"name": "laptop", "expires_days": "30"})
        assert response.status_code == 201
        assert response.headers["cache-control"] == "no-store"
        secret = find(r'id="token-secret"[^>]*value="([^"]+)"', response.text)
        assert "shown only this once" in response.text
        assert api_me(server, secret) == 200
        token_id = find(r'id="token-([0-9a-f]+)"', response.text)

        listing = ui.get("/tokens").text
        assert "laptop" in listing and secret not in listing  # shown once, never again
        row = ui.post(f"/tokens/{token_id}/revoke", htmx=True)
        assert row.status_code == 200
        assert row.text.lstrip().startswith(f'<tr id="token-{token_id}"') and "revoked" in row.text
        assert api_me(server, secret) == 401

        second = find(r'id="token-secret"[^>]*value="([^"]+)"', ui.post("/tokens", {"name": "ci"}).text)
        second_id = find(r'id="token-([0-9a-f]+)"', ui.get("/tokens").text)
        response = ui.post(f"/tokens/{second_id}/revoke")  # without htmx: back to the list
        assert response.status_code == 303 and response.headers["location"] == "/tokens"
        assert api_me(server, second) == 401


def test_token_form_errors_are_shown(server: AgoraServer):
    user, password = server.create_user()
    with UI(server) as ui:
        ui.login(user, password)
        for data, message in (({"name": "x", "expires_days": "0"}, "whole number of days"),
                              ({"name": "x", "expires_days": "soon"}, "whole number of days"),
                              ({"name": "   "}, "a token name is")):
            response = ui.post("/tokens", data)
            assert response.status_code == 422
            assert message in response.text and "Traceback" not in response.text
        response = ui.post("/tokens/0000/revoke", htmx=True)
        assert response.status_code == 404
        assert response.headers["HX-Retarget"] == "#flash" and "no such token" in response.text
        assert ui.post("/tokens/0000/revoke").status_code == 404


# -- admin ----------------------------------------------------------------------------


def test_admin_pages_are_for_admins_only(server: AgoraServer):
    user, password = server.create_user()
    name = "u" + secrets.token_hex(4)
    with UI(server) as ui:
        ui.login(user, password)
        response = ui.get("/admin/users")
        assert response.status_code == 403
        assert "for admin accounts only" in response.text and "<header" in response.text
        assert ui.post("/admin/users", {"name": name, "password": "password-123"}).status_code == 403
        assert ui.post(f"/admin/users/{user}/role", {"role": "admin"}, htmx=True).status_code == 403
    with server.admin() as http:
        assert http.get(f"/api/v1/users/{name}").status_code == 404
        assert http.get(f"/api/v1/users/{user}").json()["role"] == "user"


def test_admin_creates_and_disables_a_user(server: AgoraServer, admin_ui: UI):
    name, password = "u" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    response = admin_ui.post("/admin/users", {"name": name, "password": password, "role": "user", "quota": "500M"})
    assert response.status_code == 201
    assert f"User {name} created." in response.text and f'id="user-{name}"' in response.text
    assert "500 MiB" in response.text

    with UI(server) as ui:
        assert ui.login(name, password).status_code == 303
        assert ui.get("/dashboard").status_code == 200

        row = admin_ui.post(f"/admin/users/{name}/disable", htmx=True)
        assert row.status_code == 200
        assert row.text.lstrip().startswith(f'<tr id="user-{name}" class="disabled"')
        assert "logged out everywhere" in row.text

        # The session that was open stops working at once...
        assert ui.get("/dashboard").headers["location"].startswith("/login")
    # ...and neither the UI nor the API lets the user in again.
    with UI(server) as ui:
        response = ui.login(name, password)
        assert response.status_code == 401 and SESSION not in set_cookies(response)
    with server.client() as http:
        response = http.post("/api/v1/tokens", json={"username": name, "password": password})
        assert response.status_code == 401

    admin_ui.post(f"/admin/users/{name}/enable", htmx=True)
    with UI(server) as ui:
        assert ui.login(name, password).status_code == 303


def test_admin_changes_role_password_quota_and_deletes(server: AgoraServer, admin_ui: UI):
    name, password = server.create_user()
    row = admin_ui.post(f"/admin/users/{name}/role", {"role": "admin"}, htmx=True)
    assert row.status_code == 200 and f"{name} is now an admin." in row.text
    row = admin_ui.post(f"/admin/users/{name}/quota", {"quota": "2G"}, htmx=True)
    assert "2 GiB" in row.text
    with UI(server) as ui:
        ui.login(name, password)
        assert ui.get("/admin/users").status_code == 200
        row = admin_ui.post(f"/admin/users/{name}/password", {"password": "new-password-1"}, htmx=True)
        assert "Password of" in row.text
        assert ui.get("/dashboard").status_code == 303  # a new password ends the user's sessions
        assert ui.login(name, password).status_code == 401
        assert ui.login(name, "new-password-1").status_code == 303
    with server.admin() as http:
        user = http.get(f"/api/v1/users/{name}").json()
        assert user["role"] == "admin" and user["quota_bytes"] == 2 * 1024**3

    row = admin_ui.post(f"/admin/users/{name}/delete", htmx=True)
    assert row.status_code == 200 and 'class="gone"' in row.text
    with server.admin() as http:
        assert http.get(f"/api/v1/users/{name}").status_code == 404
    # Without htmx, the action answers with the whole page and its message.
    other, _ = server.create_user()
    page = admin_ui.post(f"/admin/users/{other}/delete")
    assert page.status_code == 200 and f"User {other} and their tokens were deleted." in page.text


def test_admin_errors_are_messages_not_stack_traces(server: AgoraServer, admin_ui: UI):
    name, _ = server.create_user()
    cases = [
        ({"name": name, "password": "password-123"}, 409, "already exists"),
        ({"name": "Bad Name", "password": "password-123"}, 422, "user names are"),
        ({"name": "u" + secrets.token_hex(4), "password": "x"}, 422, "passwords are"),
        ({"name": "u" + secrets.token_hex(4), "password": "password-123", "quota": "lots"}, 422, "a quota is"),
        ({"name": "u" + secrets.token_hex(4), "password": "password-123", "role": "root"}, 422, "role must be"),
    ]
    for data, status, message in cases:
        response = admin_ui.post("/admin/users", data)
        assert response.status_code == status, (data, response.text)
        assert message in response.text and "Traceback" not in response.text
        assert 'class="flash error"' in response.text
    assert 'value="Bad Name"' not in admin_ui.post("/admin/users", cases[1][0]).text.split("<table")[1]

    response = admin_ui.post("/admin/users/nobody-here/disable", htmx=True)
    assert response.status_code == 404
    assert response.headers["HX-Retarget"] == "#flash" and "no user named" in response.text
    response = admin_ui.post("/admin/users/admin/disable", htmx=True)
    assert response.status_code == 409 and "your own account" in response.text
    response = admin_ui.post("/admin/users/admin/role", {"role": "user"})
    assert response.status_code == 409 and "your own account" in response.text and "<table" in response.text
    response = admin_ui.post(f"/admin/users/{name}/password", {"password": "short"}, htmx=True)
    assert response.status_code == 422 and "passwords are" in response.text


# -- docs, assets, errors -------------------------------------------------------------


def test_api_docs_and_vendored_assets_are_served(server: AgoraServer):
    with server.client() as http:
        page = http.get("/api/docs")
        assert page.status_code == 200
        assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page.text
        assert 'data-openapi-url="/api/openapi.json"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        # Nothing inline that the CSP would block, nothing from elsewhere.
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
        assert "http://" not in page.text and "https://" not in page.text
        for path, kind in (("/static/vendor/swagger-ui/swagger-ui-bundle.js", "javascript"),
                           ("/static/vendor/swagger-ui/swagger-ui.css", "css"),
                           ("/static/vendor/htmx/htmx.min.js", "javascript"),
                           ("/static/swagger-init.js", "javascript"),
                           ("/static/agora.js", "javascript"),
                           ("/static/agora.css", "css")):
            response = http.get(path)
            assert response.status_code == 200 and kind in response.headers["content-type"], path
        assert http.get("/static/vendor/htmx/LICENSE").status_code == 200
        assert http.get("/static/vendor/swagger-ui/LICENSE").status_code == 200
        schema = http.get("/api/openapi.json").json()
        assert not [path for path in schema["paths"] if not path.startswith(("/api/", "/healthz", "/metrics"))]


def test_pages_have_no_inline_scripts(server: AgoraServer, admin_ui: UI):
    for path in ("/dashboard", "/tokens", "/admin/users"):
        page = admin_ui.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), path
        assert not re.search(r"<[^>]*\son[a-z]+=", page), path  # no inline event handlers
        assert f'"X-CSRF-Token": "{admin_ui.csrf}"' in page


def test_error_pages_are_html_in_the_layout(server: AgoraServer):
    with UI(server) as ui:
        response = ui.get("/no-such-page")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "<header" in response.text and "404" in response.text


def test_a_service_card_links_to_its_home_once_the_app_serves_it():
    # The one check that needs no server: which cards light up depends only on the routes
    # of the app, and no service but web has pages yet.
    from fastapi import APIRouter, FastAPI
    from starlette.requests import Request

    from agora.web import pages

    files = APIRouter()

    @files.get("/files", name="files.home")
    async def files_home() -> dict:
        return {}

    app = FastAPI()
    app.include_router(pages.router)
    app.include_router(files)
    request = Request({"type": "http", "app": app, "headers": []})
    homes = {card.name: pages._home(request, card) for card in pages.CARDS}
    assert homes == {"files": "/files", "mail": None, "bank": None, "sql": None}
