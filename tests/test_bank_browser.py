"""The bank's transfer form in a real browser (headless Chromium through Playwright):
fill it in, read the confirmation, confirm; the balance moves and no page raised a
console error (a CSP violation would be one). A double submit is in test_bank_pages."""

from __future__ import annotations

import os
import re
import secrets

import pytest

from agora.client import Client
from conftest import AgoraServer
from test_browser import browser, page  # noqa: F401 - the shared Chromium fixtures

pytestmark = pytest.mark.browser


def test_transfer_through_the_form_with_confirmation(server: AgoraServer, page):
    alice, password = server.create_user("a" + secrets.token_hex(4))
    bob, bob_password = server.create_user("b" + secrets.token_hex(4))
    with Client(server.url, server.admin_token) as admin, Client(server.url) as client:
        if "EUR" not in {currency.code for currency in admin.bank.currencies()}:
            admin.bank.add_currency("EUR", 2)
        client.login(alice, password)
        mine = client.bank.open("EUR", "main").number
        admin.bank.issue(mine, 100_00)
        client.login(bob, bob_password)
        theirs = client.bank.open("EUR").number

    page.goto(server.url + "/bank")
    page.fill("input[name=username]", alice)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Log in')")
    page.wait_for_url(server.url + "/bank")
    assert page.locator(f'tr[data-number="{mine}"] td.posted').inner_text() == "100.00"

    page.click(f'tr[data-number="{mine}"] a:has-text("Transfer")')
    page.fill("input[name=to]", theirs)
    page.fill("input[name=amount]", "12.5")
    page.fill("input[name=memo]", "lunch")
    page.click("button:has-text('Continue')")
    page.wait_for_url(server.url + "/bank/transfer/confirm")
    assert page.locator("#confirm-amount").inner_text() == "12.50 EUR"
    assert page.locator("#after").inner_text() == "87.50 EUR"
    shots = os.environ.get("AGORA_TEST_SCREENSHOTS")  # a folder to keep what the pages looked like
    if shots:
        page.screenshot(path=os.path.join(shots, "bank-confirm.png"), full_page=True)
    page.click("#confirm")
    page.wait_for_url(re.compile(r".*/bank/transfers/[0-9a-f-]{36}\?notice=sent$"))
    page.locator("#notice", has_text="Transfer done.").wait_for()
    assert page.locator("#transfer-amount").inner_text() == "12.50 EUR"
    page.goto(server.url + "/bank")
    assert page.locator(f'tr[data-number="{mine}"] td.posted').inner_text() == "87.50"
    if shots:
        page.goto(server.url + f"/bank/accounts/{mine}")
        page.screenshot(path=os.path.join(shots, "bank-statement.png"), full_page=True)
    assert page.console_errors == []
