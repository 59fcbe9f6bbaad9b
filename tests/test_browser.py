"""The web UI in a real browser: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import os
import secrets
from typing import Iterator

import pytest

from conftest import AgoraServer

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is absent (Debian package chromium; the CI script installs it)"
        print(f"\nskipping the browser tests: {reason}")
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    # Every console error counts: a CSP violation or a failed asset shows up here.
    page.console_errors = []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    yield page
    context.close()


def log_in(page, base: str, name: str, password: str) -> None:
    page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Log in')")
    page.wait_for_url(base + "/dashboard")


def test_login_dashboard_and_a_new_token(server: AgoraServer, page):
    log_in(page, server.url, "admin", server.admin_password)
    assert page.locator("h1").inner_text() == "Hello, admin"
    cards = page.locator("article.card h2")
    assert cards.all_inner_texts() == ["Web", "Files", "Mail", "Bank", "SQL"]
    assert page.locator("article.card.off").count() == 0  # every service is here

    page.click("nav >> text=Tokens")
    page.wait_for_url(server.url + "/tokens")
    page.fill("input[name=name]", "from the browser")
    page.fill("input[name=expires_days]", "7")
    page.click("button:has-text('Create token')")
    secret = page.locator("#token-secret").input_value()
    assert secret.startswith("agora_")
    assert "shown only this once" in page.locator("#new-token").inner_text()
    with server.client(secret) as http:
        assert http.get("/api/v1/me").json()["name"] == "admin"

    # Revoking is an htmx request that swaps the row in place, after a confirmation.
    page.once("dialog", lambda dialog: dialog.accept())
    row = page.locator("tr", has_text="from the browser")
    row.locator("button:has-text('Revoke')").click()
    row.locator("text=revoked").wait_for()
    with server.client(secret) as http:
        assert http.get("/api/v1/me").status_code == 401
    assert page.console_errors == []


def test_admin_disables_a_user_in_place(server: AgoraServer, page):
    name = "b" + secrets.token_hex(4)
    log_in(page, server.url, "admin", server.admin_password)
    page.click("nav >> text=Admin")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", "browser-password-1")
    page.click("button:has-text('Create user')")
    row = page.locator(f"#user-{name}")
    row.wait_for()
    row.locator("button:has-text('Disable')").click()
    row.locator("text=disabled and logged out everywhere").wait_for()
    page.locator(f"#user-{name}.disabled").wait_for()
    # A refused action shows its message at the top of the page.
    own = page.locator("#user-admin")
    own.locator("summary").click()
    own.locator("input[name=password]").fill("short")
    own.locator("button:has-text('Set password')").click()
    page.locator("#flash .flash.error").wait_for()
    assert "passwords are" in page.locator("#flash").inner_text()
    assert [e for e in page.console_errors if "422" not in e] == []


def test_api_docs_render_under_the_csp(server: AgoraServer, page):
    page.goto(server.url + "/api/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "Agora" in page.locator(".swagger-ui .info .title").inner_text()
    page.get_by_text("/api/v1/tokens", exact=True).first.wait_for()
    assert page.console_errors == []
