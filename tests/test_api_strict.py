"""The API takes values only as documented, and HTTPS says so for good.

Bank amounts are JSON integers in minor units on every route that takes one: ``true``,
``"100"``, ``" 100"`` and ``100.0`` are refused with 422 and move nothing (lax parsing
took ``true`` as one cent). HTTPS answers carry Strict-Transport-Security (the setting
``http.hsts``), plain HTTP answers do not.
"""

from __future__ import annotations

import uuid

import pytest

from agora import config as configuration

NOT_INTEGERS = [True, False, "100", " 100", 100.0, "1e2", None]
BANK = "/api/v1/bank"


@pytest.fixture(scope="module")
def accounts(server):
    """(admin, alice, alice's funded EUR account, bob's EUR account)."""
    admin = server.admin()
    response = admin.post(f"{BANK}/currencies", json={"code": "EUR", "exponent": 2})
    assert response.status_code in (200, 201), response.text
    clients = []
    for _ in range(2):
        name, password = server.create_user()
        clients.append(server.client(server.login(name, password)))
    alice, bob = clients
    mine = alice.post(f"{BANK}/accounts", json={"currency": "EUR"}).json()["number"]
    theirs = bob.post(f"{BANK}/accounts", json={"currency": "EUR"}).json()["number"]
    issued = admin.post(f"{BANK}/issue", json={"id": str(uuid.uuid4()), "account": mine, "amount": 10_000})
    assert issued.status_code == 201, issued.text
    yield admin, alice, mine, theirs
    for client in (admin, alice, bob):
        client.close()


def _posted(client, number: str) -> int:
    return client.get(f"{BANK}/accounts/{number}").json()["balance"]["posted"]


@pytest.mark.parametrize("amount", NOT_INTEGERS, ids=repr)
def test_bank_amounts_are_json_integers_only(accounts, amount):
    admin, alice, mine, theirs = accounts
    before = _posted(alice, mine)

    def transfer(**extra):
        return {"id": str(uuid.uuid4()), "debit": mine, "credit": theirs, "amount": amount, **extra}

    refused = [
        alice.post(f"{BANK}/transfers", json=transfer()),
        alice.post(f"{BANK}/transfers", json=transfer(pending=True, timeout=60)),
        alice.post(f"{BANK}/transfers/batch", json={"transfers": [transfer()]}),
        admin.post(f"{BANK}/issue", json={"id": str(uuid.uuid4()), "account": mine, "amount": amount}),
    ]
    pending = alice.post(f"{BANK}/transfers", json={**transfer(), "amount": 5, "pending": True, "timeout": 60})
    assert pending.status_code == 201, pending.text
    if amount is not None:  # a post without an amount is the documented "all of it"
        refused.append(alice.post(f"{BANK}/transfers/{pending.json()['id']}/post", json={"amount": amount}))
    for response in refused:
        assert response.status_code == 422, (response.request.url, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert alice.post(f"{BANK}/transfers/{pending.json()['id']}/void").status_code == 201
    assert _posted(alice, mine) == before  # nothing moved


def test_integer_amounts_still_move_money(accounts):
    admin, alice, mine, theirs = accounts
    before = _posted(alice, mine)
    body = {"id": str(uuid.uuid4()), "debit": mine, "credit": theirs, "amount": 100}
    assert alice.post(f"{BANK}/transfers", json=body).status_code == 201
    assert alice.post(f"{BANK}/transfers", json=body).status_code == 200  # a retry: the original
    batch = [{"id": str(uuid.uuid4()), "debit": mine, "credit": theirs, "amount": 1}]
    assert alice.post(f"{BANK}/transfers/batch", json={"transfers": batch}).status_code == 201
    pending = alice.post(f"{BANK}/transfers", json={**body, "id": str(uuid.uuid4()), "pending": True, "timeout": 60})
    assert alice.post(f"{BANK}/transfers/{pending.json()['id']}/post", json={"amount": 10}).status_code == 201
    assert _posted(alice, mine) == before - 111


def test_https_answers_carry_hsts_and_plain_http_does_not(server):
    with server.client(https=True) as https:
        for path in ("/healthz", "/api/v1/nothing-here", "/~nobody/index.html"):
            response = https.get(path)
            assert response.headers.get("strict-transport-security") == "max-age=31536000", path
    with server.client() as http:
        assert "strict-transport-security" not in http.get("/healthz").headers


def test_hsts_setting_is_validated():
    assert configuration.load(environ={"AGORA_HTTP_HSTS": ""}).http.hsts == ""
    assert configuration.load(environ={"AGORA_HTTP_HSTS": "max-age=60; includeSubDomains"}).http.hsts \
        == "max-age=60; includeSubDomains"
    with pytest.raises(configuration.ConfigError):
        configuration.load(environ={"AGORA_HTTP_HSTS": "max-age=60\r\nX-Evil: 1"})
