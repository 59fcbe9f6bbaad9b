"""The bank's pages at /bank over real HTTP, as a browser without JavaScript uses them:
the dashboard card, opening accounts, the admin page (currencies, issuing, the check),
the transfer form and its confirmation step (a double submit commits once), pending
holds posted and voided, the statement by pages and as CSV; CSRF refused on every POST;
one user can neither read nor debit another's account."""

from __future__ import annotations

import csv
import html
import io
import re
import secrets
from typing import Iterator

import httpx
import pytest

from agora.client import Client
from agora.client.bank import transfer_body
from conftest import AgoraServer


class Browser:
    """A logged-in browser-like client: cookies kept, redirects not followed."""

    def __init__(self, server: AgoraServer, name: str, password: str):
        self.server = server
        self.name = name
        self.password = password
        self.http = server.client()
        self.http.headers["Accept"] = "text/html"
        form = self.http.get("/login")
        response = self.http.post("/login", data={"username": name, "password": password,
                                                  "csrf_token": self.csrf_of(form.text), "next": "/bank"})
        assert response.status_code == 303 and response.headers["location"] == "/bank", response.text
        self.csrf = self.csrf_of(self.page("/bank"))

    @staticmethod
    def csrf_of(page: str) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, page[:2000]
        return html.unescape(match.group(1))

    def page(self, path: str, status: int = 200, **params: str) -> str:
        response = self.http.get(path, params=params or None)  # params={} would drop the path's own query
        assert response.status_code == status, (response.status_code, response.text[:2000])
        return response.text

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True) -> httpx.Response:
        data = dict(data or {})
        if csrf:
            data["csrf_token"] = self.csrf
        return self.http.post(path, data=data)

    def close(self) -> None:
        self.http.close()


def hidden_fields(page: str, form_id: str) -> dict[str, str]:
    form = re.search(rf'<form[^>]*id="{form_id}".*?</form>', page, re.S).group(0)
    return {name: html.unescape(value) for name, value in
            re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)}


def cell(page: str, number: str, css: str) -> str:
    row = re.search(rf'<tr data-number="{number}".*?</tr>', page, re.S).group(0)
    return re.search(rf'<td class="amount {css}">([^<]*)</td>', row).group(1)


@pytest.fixture
def people(server: AgoraServer) -> Iterator[callable]:
    made: list[Browser] = []
    with Client(server.url, server.admin_token) as admin:
        if "EUR" not in {currency.code for currency in admin.bank.currencies()}:
            admin.bank.add_currency("EUR", 2)

    def make(role: str = "user") -> Browser:
        name, password = server.create_user("b" + secrets.token_hex(4), role=role)
        made.append(Browser(server, name, password))
        return made[-1]

    yield make
    for browser in made:
        browser.close()


def open_account(browser: Browser, name: str = "main") -> str:
    response = browser.post("/bank/accounts", {"currency": "EUR", "name": name})
    assert response.status_code == 303 and response.headers["location"] == "/bank?notice=opened", response.text
    numbers = re.findall(r'<tr data-number="([^"]+)"', browser.page("/bank"))
    return numbers[-1]


def issue(admin: Browser, number: str, amount: str) -> None:
    fields = hidden_fields(admin.page("/bank/admin"), "issue")
    response = admin.post("/bank/admin/issue", {"id": fields["id"], "account": number, "amount": amount})
    assert response.status_code == 303 and response.headers["location"] == "/bank/admin?notice=issued", response.text


def test_the_bank_needs_a_login_and_is_on_the_dashboard(server: AgoraServer, people):
    with server.client() as anonymous:
        response = anonymous.get("/bank", headers={"Accept": "text/html"})
        assert response.status_code == 303 and response.headers["location"] == "/login?next=/bank"
        assert anonymous.post("/bank/transfer", data={"from": "x"}).status_code == 303
    alice = people()
    assert re.search(r'id="card-bank".*?href="/bank"', alice.page("/dashboard"), re.S)
    assert "You have no accounts yet." in alice.page("/bank")


def test_open_issue_transfer_with_confirmation(server: AgoraServer, people):
    admin, alice, bob = people("admin"), people(), people()
    mine, theirs = open_account(alice), open_account(bob, "pocket")
    issue(admin, mine, "100")
    home = alice.page("/bank")
    assert cell(home, mine, "posted") == "100.00" and cell(home, mine, "available") == "100.00"

    form = alice.page("/bank/transfer", **{"from": mine})
    assert f'<option value="{mine}" selected>' in form
    confirm = alice.post("/bank/transfer/confirm", {"from": mine, "to": theirs, "amount": "12.5", "memo": "lunch"})
    assert confirm.status_code == 200, confirm.text
    assert "12.50 EUR" in confirm.text and "87.50 EUR" in confirm.text and "Nothing has moved yet" in confirm.text
    assert cell(alice.page("/bank"), mine, "posted") == "100.00"  # the confirmation page moved nothing

    fields = hidden_fields(confirm.text, "confirm-form")
    assert re.fullmatch(r"[0-9a-f-]{36}", fields["id"]) and fields["amount"] == "12.50"
    fields.pop("csrf_token")
    first = alice.post("/bank/transfer", fields)
    assert first.status_code == 303 and first.headers["location"] == f"/bank/transfers/{fields['id']}?notice=sent"
    again = alice.post("/bank/transfer", fields)  # a double click, or the form posted again
    assert again.status_code == 303 and again.headers["location"] == first.headers["location"]
    done = alice.page(first.headers["location"])
    assert "Transfer done." in done and "12.50 EUR" in done and "lunch" in done, done[done.find("<main>"):]
    assert cell(alice.page("/bank"), mine, "posted") == "87.50"
    assert cell(bob.page("/bank"), theirs, "posted") == "12.50"

    # Bad input comes back to the form with the reason, and nothing moves.
    for amount, reason in (("1.005", "at most 2 decimals"), ("abc", "not an amount"), ("0", "more than 0")):
        refused = alice.post("/bank/transfer/confirm", {"from": mine, "to": theirs, "amount": amount})
        assert refused.status_code == 422 and reason in html.unescape(refused.text), refused.text
    too_much = alice.post("/bank/transfer", {**fields, "id": "5b3c2a9e-8a43-4f6e-9b5a-0f3c1f1d2e4a", "amount": "500"})
    assert too_much.status_code == 422 and "available" in too_much.text
    assert cell(alice.page("/bank"), mine, "posted") == "87.50"


def test_holds_post_and_void(people):
    admin, alice, bob = people("admin"), people(), people()
    mine, theirs = open_account(alice), open_account(bob)
    issue(admin, mine, "20")

    def hold(amount: str) -> str:
        confirm = alice.post("/bank/transfer/confirm", {"from": mine, "to": theirs, "amount": amount,
                                                        "pending": "1", "timeout": "600"})
        assert "Reserve" in confirm.text, confirm.text
        fields = hidden_fields(confirm.text, "confirm-form")
        fields.pop("csrf_token")
        response = alice.post("/bank/transfer", fields)
        assert response.headers["location"].endswith("?notice=reserved")
        return fields["id"]

    first, second = hold("5"), hold("3")
    home = alice.page("/bank")
    assert cell(home, mine, "posted") == "20.00" and cell(home, mine, "available") == "12.00"
    assert f'<tr data-id="{first}">' in home and f'<tr data-id="{second}">' in home
    assert f'<tr data-id="{first}">' in bob.page("/bank")  # the credited side sees it too
    assert first not in people().page("/bank")  # no one else does
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d UTC</td>", home)  # when it expires

    posted = alice.post(f"/bank/transfers/{first}/post")
    assert posted.status_code == 303 and "Pending transfer posted" in alice.page(posted.headers["location"])
    voided = bob.post(f"/bank/transfers/{second}/void")
    assert voided.status_code == 303
    home = alice.page("/bank")
    assert cell(home, mine, "posted") == "15.00" and cell(home, mine, "available") == "15.00"
    assert "No pending transfers" in home
    assert alice.post(f"/bank/transfers/{second}/post").status_code == 409  # resolved once
    assert "voided" in alice.page(f"/bank/transfers/{second}")


def test_statement_pages_and_csv(server: AgoraServer, people):
    admin, alice, bob = people("admin"), people(), people()
    mine, theirs = open_account(alice), open_account(bob)
    issue(admin, mine, "1000")
    with Client(server.url) as client:
        client.login(alice.name, alice.password)
        client.bank.batch([transfer_body(mine, theirs, n, "EUR", memo=f"n{n}") for n in range(1, 60)] +
                          [transfer_body(mine, theirs, 60, "EUR", memo='=HYPERLINK("http://x.example","n60")')])

    first = alice.page(f"/bank/accounts/{mine}")
    rows = re.findall(r'<tr data-transfer="([^"]+)"', first)
    assert len(rows) == 50 and "n49" in first and "n50" not in first
    next_url = html.unescape(re.search(r'href="([^"]+)" rel="next"', first).group(1))
    second = alice.page(next_url)
    assert len(re.findall(r'<tr data-transfer="', second)) == 11 and 'rel="next"' not in second
    assert "n60" in second and "-0.60" in second and "981.70" in second  # 1000.00 - (1 + ... + 60 cents)

    response = alice.http.get(f"/bank/accounts/{mine}/statement.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 61 and rows[0]["kind"] == "issue" and rows[-1]["amount"] == "-0.60"
    assert rows[-1]["balance"] == "981.70"
    assert rows[-1]["memo"] == "'" + '=HYPERLINK("http://x.example","n60")'  # text, not a formula
    assert "No transfers in this period" in alice.page(f"/bank/accounts/{mine}", **{"from": "2999-01-01"})


def test_csrf_and_denials(server: AgoraServer, people):
    admin, alice, mallory = people("admin"), people(), people()
    victim, own = open_account(alice), open_account(mallory)
    issue(admin, victim, "50")

    for path, data in (("/bank/accounts", {"currency": "EUR"}), ("/bank/transfer", {"from": victim}),
                       ("/bank/transfer/confirm", {"from": victim}), ("/bank/admin/issue", {"account": victim})):
        assert alice.post(path, data, csrf=False).status_code == 403, path
    assert alice.post("/bank/admin/issue", {"id": "5b3c2a9e-8a43-4f6e-9b5a-0f3c1f1d2e4b", "account": victim,
                                            "amount": "10"}).status_code == 403  # not an admin
    alice.page("/bank/admin", status=403)

    mallory.page(f"/bank/accounts/{victim}", status=403)
    assert mallory.http.get(f"/bank/accounts/{victim}/statement.csv").status_code == 403
    assert mallory.post("/bank/transfer/confirm", {"from": victim, "to": own, "amount": "10"}).status_code == 403
    stolen = mallory.post("/bank/transfer", {"id": "5b3c2a9e-8a43-4f6e-9b5a-0f3c1f1d2e4c", "from": victim, "to": own,
                                             "amount": "10"})
    assert stolen.status_code == 403
    assert cell(alice.page("/bank"), victim, "posted") == "50.00"
    assert cell(mallory.page("/bank"), own, "posted") == "0.00"

    checked = admin.page("/bank/admin", check="1")
    assert 'id="check-ok"' in checked and victim in checked
