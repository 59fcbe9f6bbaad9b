"""Mail identity and the limits of sending, on every path: an authenticated user sends
only as an address of theirs (own, alias, or allowed by an admin), as envelope sender
and in From:/Sender:, with no display name that looks like another address; submission
(smtplib) answers 553 5.7.1, the API 403, the webmail its form with the reason. The API
and the webmail refuse more than mail.max_recipients, and never cut a long To:."""

from __future__ import annotations

import base64
import secrets
import smtplib
from email import message_from_bytes, policy
from typing import Iterator

import httpx
import pytest

from conftest import AgoraServer
from mail_support import TIMEOUT, module_server, unverified
from test_mail_cli import agora, logged_in, ok, refused
from test_mail_pages import Mailer

DOMAIN = "a.test"
MAX_RECIPIENTS = 5
API = "/api/v1/mail"
SPOOFS = (  # From: values that must not pass for alice's
    "{bob}@a.test",
    "Alice <{bob}@a.test>",
    '"{bob}@a.test" <{alice}@a.test>',  # shown as bob by many readers
    "=?utf-8?b?{encoded}?= <{alice}@a.test>",  # the same, as an encoded word
    '"{bob}\uff20a.test" <{alice}@a.test>',  # a full-width at sign
    "{alice}@a.test ({bob}@a.test)",  # in a comment
    "{bob}@a.test <{alice}@a.test>",  # does not parse cleanly
    "{alice}@a.test, {bob}@a.test",
    "ceo@partner-not.example",
)


class People:
    def __init__(self, server: AgoraServer):
        self.server = server
        (self.alice, self.alice_password), (self.bob, self.bob_password), (self.carol, self.carol_password) = (
            server.create_user() for _ in range(3))
        with server.admin() as admin:
            for path, body in (("aliases", {"address": f"sales@{DOMAIN}", "user": self.alice}),
                               ("senders", {"user": self.alice, "pattern": "*@partner.example"})):
                response = admin.post(f"{API}/{path}", json=body)
                assert response.status_code == 201, response.text

    def spoofs(self) -> list[str]:
        encoded = base64.b64encode(f"{self.bob}@a.test".encode()).decode()
        return [spoof.format(alice=self.alice, bob=self.bob, encoded=encoded) for spoof in SPOOFS]

    def inbox(self, name: str) -> list[bytes]:
        root = self.server.data_dir / "mail" / name
        return [path.read_bytes() for sub in ("new", "cur") if (root / sub).is_dir()
                for path in sorted((root / sub).iterdir())]


@pytest.fixture(scope="module")
def people(tmp_path_factory, backend) -> Iterator[People]:
    args = ("--mail-domains", f"{DOMAIN},localhost", "--mail-max-recipients", str(MAX_RECIPIENTS))
    with module_server(tmp_path_factory, backend, "identity", args) as server:
        yield People(server)


def raw_message(sender: str, to: str, subject: str, *extra: str) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", *extra,
             f"Message-ID: <{secrets.token_hex(8)}@test>"]
    return ("\r\n".join(lines) + "\r\n\r\nHello.\r\n").encode()


def submission(people: People) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", people.server.ports["submission"], timeout=TIMEOUT)
    client.starttls(context=unverified())
    client.login(people.alice, people.alice_password)
    return client


def test_submission_refuses_what_is_not_yours(people):
    alice, bob, carol = people.alice, people.bob, people.carol
    to = f"{carol}@{DOMAIN}"
    with submission(people) as client:
        for envelope in (f"{bob}@{DOMAIN}", "ceo@example.org", "x@sub.partner.example"):
            code, text = client.mail(envelope)
            assert (code, text[:5]) == (553, b"5.7.1"), envelope
            client.rset()
        for spoof in people.spoofs():
            with pytest.raises(smtplib.SMTPDataError) as error:
                client.sendmail(f"{alice}@{DOMAIN}", [to], raw_message(spoof, to, "spoofed"))
            assert (error.value.smtp_code, error.value.smtp_error[:5]) == (553, b"5.7.1"), spoof
            client.rset()
        with pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail(f"{alice}@{DOMAIN}", [to], raw_message(f"{alice}@{DOMAIN}", to, "spoofed",
                                                                   f"Sender: {bob}@{DOMAIN}"))
        assert error.value.smtp_code == 553
        client.rset()
        assert [m for m in people.inbox(carol) if b"spoofed" in m] == []

        # Own (with a name and a +tag), an alias, and what the admin allowed pass.
        for envelope, sender in ((f"{alice}@{DOMAIN}", f'"Alice A." <{alice}+news@localhost>'),
                                 (f"sales@{DOMAIN}", f"Sales <sales@{DOMAIN}>"),
                                 ("team@partner.example", '"team@partner.example" <team@partner.example>')):
            raw = raw_message(sender, to, f"mine {envelope}", "Reply-To: anyone@example.org")
            assert client.sendmail(envelope, [to], raw) == {}
    got = [m for m in people.inbox(carol) if b"Subject: mine" in m]
    assert len(got) == 3 and b'From: "team@partner.example" <team@partner.example>' in b"".join(got)


def test_api_refuses_what_is_not_yours(people):
    server, alice, bob, carol = people.server, people.alice, people.bob, people.carol
    to = f"{carol}@{DOMAIN}"
    with server.client(server.login(alice, people.alice_password)) as http:
        def send(**body) -> httpx.Response:
            return http.post(f"{API}/send", json={"to": [to], "subject": "api", "text": "x", **body})

        for spoof in people.spoofs():
            response = send(**{"from": spoof})
            assert response.status_code == 403, (spoof, response.text)
            assert response.json()["type"] == "urn:agora:problem:not-your-address"
        for n, sender in enumerate((f"Alice <{alice}@{DOMAIN}>", f"sales@{DOMAIN}", "Partner <p@partner.example>")):
            response = send(**{"from": sender, "subject": f"api {n}"})
            assert response.status_code == 200, response.text
            [got] = [m for m in people.inbox(carol) if f"Subject: api {n}\r\n".encode() in m]
            assert message_from_bytes(got, policy=policy.default)["From"] == sender
        # More than mail.max_recipients: refused whole, nothing sent.
        many = [f"{carol}+{n}@{DOMAIN}" for n in range(MAX_RECIPIENTS + 1)]
        before = len(people.inbox(carol))
        response = http.post(f"{API}/send", json={"to": many[:3], "cc": many[3:], "text": "x"})
        assert response.status_code == 422 and "mail.max_recipients" in response.json()["detail"]
        assert response.json()["type"] == "urn:agora:problem:too-many-recipients"
        assert len(people.inbox(carol)) == before
    # What the admin allows is per user: bob may not use alice's pattern.
    with server.client(server.login(bob, people.bob_password)) as http:
        response = http.post(f"{API}/send", json={"to": [to], "text": "x", "from": "p@partner.example"})
        assert response.status_code == 403, response.text
        assert http.get(f"{API}/senders").status_code == 403  # admins only
    with server.admin() as admin:
        assert [item["pattern"] for item in admin.get(f"{API}/senders", params={"user": alice}).json()] == [
            "*@partner.example"]
        for pattern in ("not a pattern", "*@*", "a@b@c", "x?@partner.example"):
            assert admin.post(f"{API}/senders", json={"user": bob, "pattern": pattern}).status_code == 422, pattern
        assert admin.post(f"{API}/senders", json={"user": "nobody-here", "pattern": "a@b.c"}).status_code == 404
        assert admin.post(f"{API}/senders", json={"user": alice, "pattern": "*@Partner.example"}).status_code == 409


def test_webmail_refuses_spoofs_and_too_many_recipients_and_never_cuts(people):
    alice, carol = people.alice, people.carol
    mailer = Mailer(people.server, alice, people.alice_password)
    try:
        compose = mailer.http.get("/mail/compose").text
        assert f'<option value="sales@{DOMAIN}">' in compose  # the alias is offered as From
        # A reply to mail written to the alias is from the alias.
        with people.server.client(people.server.login(carol, people.carol_password)) as http:
            response = http.post(f"{API}/send", json={"to": [f"sales@{DOMAIN}"], "subject": "to sales", "text": "x"})
            assert response.status_code == 200, response.text
        reply = mailer.http.get("/mail/compose", params={"mode": "reply", "folder": "INBOX",
                                                         "uid": mailer.uids()[0]}).text
        assert f'name="from" value="sales@{DOMAIN}"' in reply and f'name="to" value="{carol}@{DOMAIN}"' in reply
        for spoof in people.spoofs():
            response = mailer.send(to=f"{carol}@{DOMAIN}", subject="kept", body="x", **{"from": spoof})
            assert response.status_code == 403, (spoof, response.text[:300])
            assert 'id="compose-error"' in response.text and 'name="subject" value="kept"' in response.text
        sent = mailer.send(to=f"{carol}@{DOMAIN}", subject="as partner", body="x",
                           **{"from": "Partner <p@partner.example>"})
        assert sent.status_code == 303, sent.text[:500]

        many = ", ".join(f"{carol}+{n}@{DOMAIN}" for n in range(MAX_RECIPIENTS + 1))
        response = mailer.send(to=many, subject="too many", body="x")
        assert response.status_code == 422 and "mail.max_recipients" in response.text
        assert 'id="compose-error"' in response.text

        # A To: past 4,096 characters, the 4,096th in the middle of the last address:
        # it goes out whole (each address intact) or not at all, never cut.
        addresses = [f"{carol}+{n}@{DOMAIN}" for n in range(MAX_RECIPIENTS)]

        def to_field(pad: int) -> str:
            names = [f"Person {n} " + "x" * (700 + (pad if n == 0 else 0)) for n in range(MAX_RECIPIENTS)]
            return ", ".join(f'"{name}" <{address}>' for name, address in zip(names, addresses))

        pad = 4096 - (to_field(0).rindex(addresses[-1]) + len(addresses[-1]) // 2)
        assert pad > 0
        to = to_field(pad)
        assert to.rindex(addresses[-1]) < 4096 < to.rindex(addresses[-1]) + len(addresses[-1])
        response = mailer.send(to=to, subject="long to", body="x")
        assert response.status_code == 303, response.text[:500]
        [copy] = [m for m in mailer.raw_messages("Sent") if b"Subject: long to" in m]
        written = [address.addr_spec for address in message_from_bytes(copy, policy=policy.default)["To"].addresses]
        assert written == addresses
        assert len([m for m in people.inbox(carol) if b"Subject: long to" in m]) >= 1
        assert [m for m in mailer.raw_messages("Sent") if b"Subject: too many" in m] == []
    finally:
        mailer.close()


def test_admin_grants_with_the_cli(people, tmp_path):
    server, bob = people.server, people.bob
    home, _, _ = logged_in(server, tmp_path, "admin", "admin", server.admin_password)
    assert f"{bob}  may send as  news@example.org" in ok(agora("mail", "senders", "add", bob, "News@Example.org",
                                                               home=home)).stdout
    assert "news@example.org" in ok(agora("mail", "senders", "ls", bob, home=home)).stdout
    assert "not an address" in refused(agora("mail", "senders", "add", bob, "news", home=home))
    with server.client(server.login(bob, people.bob_password)) as http:
        body = {"to": [f"{people.carol}@{DOMAIN}"], "text": "x", "from": "news@example.org"}
        assert http.post(f"{API}/send", json=body).status_code == 200
        ok(agora("mail", "senders", "rm", bob, "news@example.org", home=home))
        assert http.post(f"{API}/send", json=body).status_code == 403
