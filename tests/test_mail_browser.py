"""The webmail in a real browser (headless Chromium through Playwright): one user
composes a message with an attachment to another, who sees it unread, opens it,
downloads the attachment, flags it and replies; an HTML message shows in its sandbox."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import pytest

from conftest import AgoraServer
from test_browser import browser  # noqa: F401 - the shared Chromium fixture
from test_mail_pages import Mailer, drop_in

pytestmark = pytest.mark.browser


class Tab:
    """One user's browser context, logged in at /mail, with every console error kept."""

    def __init__(self, browser, server: AgoraServer, name: str, password: str):
        self.context = browser.new_context(ignore_https_errors=True, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", lambda dialog: (self.errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        self.page.goto(server.url + "/mail")
        self.page.fill("input[name=username]", name)
        self.page.fill("input[name=password]", password)
        self.page.click("button:has-text('Log in')")
        self.page.wait_for_url(server.url + "/mail")


def test_compose_read_download_and_reply(server: AgoraServer, browser, tmp_path: Path):
    alice_name, alice_password = server.create_user("a" + secrets.token_hex(4))
    bob_name, bob_password = server.create_user("b" + secrets.token_hex(4))
    attachment = tmp_path / "minutes 2024.pdf"
    attachment.write_bytes(b"%PDF-1.4\n" + os.urandom(150_000))
    subject = "Minutes of the meeting " + secrets.token_hex(3)
    alice = Tab(browser, server, alice_name, alice_password)
    bob = None
    try:
        page = alice.page
        page.click("a:has-text('Compose')")
        page.wait_for_url(server.url + "/mail/compose")
        page.fill("input[name=to]", f"{bob_name}@localhost")
        page.fill("input[name=subject]", subject)
        page.fill("textarea[name=body]", "Hello Bob,\n\nthe minutes are attached.\n")
        page.set_input_files("#attach", str(attachment))
        page.locator("#chosen li", has_text="minutes 2024.pdf").wait_for()
        page.click("#send")
        page.wait_for_url(re.compile(r".*/mail\?notice=sent$"))
        page.locator("#notice", has_text="Message sent.").wait_for()

        bob = Tab(browser, server, bob_name, bob_password)
        page = bob.page
        row = page.locator("#messages tr.unread", has_text=subject)
        row.wait_for()
        link = row.locator("td.subject a")
        assert link.evaluate("element => getComputedStyle(element).fontWeight") == "700"  # bold: unread
        assert page.locator("#folders a[data-folder=INBOX] .count").inner_text() == "1"
        # Flag it from the list: htmx swaps the star in place.
        row.locator("button.star").click()
        row.locator("button.star[aria-pressed=true]").wait_for()

        link.click()
        page.wait_for_url(re.compile(r".*/mail/message\?folder=INBOX&uid=\d+$"))
        assert page.locator("#subject").inner_text() == subject
        assert alice_name in page.locator("#from").inner_text()
        assert "the minutes are attached." in page.locator("#text-body").inner_text()
        assert page.locator(".star-form button[aria-pressed=true]").count() == 1
        assert page.locator("#folders a[data-folder=INBOX] .count").count() == 0  # read now
        with page.expect_download() as info:
            page.click("#attachments a:has-text('minutes 2024.pdf')")
        download = info.value
        assert download.suggested_filename == "minutes 2024.pdf"
        assert Path(download.path()).read_bytes() == attachment.read_bytes()

        page.click("a.button:has-text('Reply')")
        page.wait_for_url(re.compile(r".*/mail/compose\?mode=reply&.*"))
        assert page.input_value("input[name=to]") == f"{alice_name}@localhost"
        assert page.input_value("input[name=subject]") == f"Re: {subject}"
        quoted = page.input_value("textarea[name=body]")
        assert "> the minutes are attached." in quoted and quoted.startswith("\n")
        page.fill("textarea[name=body]", "Thanks, Alice!" + quoted)
        page.click("#send")
        page.wait_for_url(re.compile(r".*/mail\?notice=sent$"))
        page.locator("#messages tr", has_text=subject).locator(".badge:has-text('answered')").wait_for()

        page = alice.page
        page.goto(server.url + "/mail")
        page.locator("#messages tr.unread", has_text=f"Re: {subject}").locator("td.subject a").click()
        assert "Thanks, Alice!" in page.locator("#text-body").inner_text()
        assert "> the minutes are attached." in page.locator("#text-body").inner_text()
        assert alice.errors == [] and bob.errors == []
    finally:
        alice.context.close()
        if bob is not None:
            bob.context.close()


def test_html_mail_is_shown_in_its_sandbox(server: AgoraServer, browser):
    name, password = server.create_user("h" + secrets.token_hex(4))
    mailer = Mailer(server, name, password)  # makes the Maildir
    mailer.close()
    raw = (b"From: news@example.org\r\nSubject: newsletter\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b"<h2 style=\"color: #a00\">Big news</h2><p id=x>Read <a href=\"https://example.org/\">more</a></p>"
           b"<script>alert('script ran')</script><img src=x onerror=\"alert('handler ran')\">\r\n")
    drop_in(mailer, raw, "1700000000.M2P2Q2.test")
    tab = Tab(browser, server, name, password)
    try:
        page = tab.page
        page.locator("#messages a:has-text('newsletter')").first.click()
        frame = page.frame_locator("#html-body")
        frame.locator("h2", has_text="Big news").wait_for()
        assert frame.locator("a", has_text="more").get_attribute("href") == "https://example.org/"
        assert frame.locator("script").count() == 0
        page.wait_for_timeout(300)  # time for a script or handler to run, had any survived
        assert tab.errors == []
    finally:
        tab.context.close()
