"""The mail HTTP API (/api/v1/mail) against real servers on both backends: sending
between local users (JSON and multipart), reading back byte for byte, attachments,
flags, move, delete to Trash, folders, pagination, limits, aliases, and that no token
reaches another user's mail."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import secrets
from email import message_from_bytes, policy
from typing import Iterator

import httpx
import pytest

from agora.mail.api import MAX_PAGE
from conftest import AgoraServer

API = "/api/v1/mail"
PROBLEM = "application/problem+json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    if slug:
        assert body["type"] == f"urn:agora:problem:{slug}", body
    return body


class Mailbox:
    """One user of the API: name, address, and an httpx client with their token."""

    def __init__(self, server: AgoraServer, role: str = "user"):
        self.server = server
        self.name, self.password = server.create_user(role=role)
        self.address = f"{self.name}@localhost"
        self.token = server.login(self.name, self.password)
        self.http = server.client(self.token)

    def send(self, **body) -> dict:
        response = self.http.post(f"{API}/send", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def listing(self, folder: str = "INBOX", **params) -> dict:
        response = self.http.get(f"{API}/folders/{folder}/messages", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def uids(self, folder: str = "INBOX") -> list[int]:
        return [item["uid"] for item in self.listing(folder, limit=MAX_PAGE)["messages"]]

    def message(self, uid: int, folder: str = "INBOX") -> dict:
        response = self.http.get(f"{API}/folders/{folder}/messages/{uid}")
        assert response.status_code == 200, response.text
        return response.json()

    def raw(self, uid: int, folder: str = "INBOX") -> bytes:
        response = self.http.get(f"{API}/folders/{folder}/messages/{uid}/raw")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "message/rfc822"
        return response.content

    def maildir_files(self, folder: str = "INBOX") -> list[bytes]:
        root = self.server.data_dir / "mail" / self.name
        directory = root if folder == "INBOX" else root / f".{folder}"
        return [path.read_bytes() for sub in ("new", "cur") for path in sorted((directory / sub).iterdir())]

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def pair(server) -> Iterator[tuple[Mailbox, Mailbox]]:
    a, b = Mailbox(server), Mailbox(server)
    yield a, b
    a.close()
    b.close()


def test_send_json_with_attachments_and_read_back_exactly(pair):
    alice, bob = pair
    binary = os.urandom(200_000)
    page = b"<html><body><script>alert(1)</script>hi</body></html>"
    sent = alice.send(to=[f"Bob <{bob.address}>"], subject="Quarterly report \u00e9t\u00e9",
                      text="Here it is.\nSee the attachments.\n",
                      attachments=[{"filename": "data.bin", "content_type": "application/octet-stream",
                                    "content_base64": base64.b64encode(binary).decode()},
                                   {"filename": "page.html", "content_type": "text/html",
                                    "content_base64": base64.b64encode(page).decode()}])
    assert sent["delivered"] == [bob.address] and sent["queued"] == []
    assert sent["message_id"].startswith("<") and sent["sent_uid"]

    [uid] = bob.uids()
    raw = bob.raw(uid)
    # The message Bob has is byte for byte the one composed: Alice's Sent copy, and the
    # file in Bob's Maildir.
    assert raw == alice.raw(sent["sent_uid"], "Sent")
    assert bob.maildir_files() == [raw]
    assert len(raw) == sent["size"]
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Message-ID"] == sent["message_id"] and parsed["From"] == alice.address
    assert parsed["Bcc"] is None

    item = bob.listing()["messages"][0]
    assert item["subject"] == "Quarterly report \u00e9t\u00e9" and item["from"] == alice.address
    assert item["seen"] is False and item["has_attachments"] is True and item["size"] == len(raw)

    message = bob.message(uid)
    assert message["text"] == "Here it is.\nSee the attachments.\n"
    assert message["to"] == f"Bob <{bob.address}>" and message["message_id"] == sent["message_id"]
    assert [(a["index"], a["filename"], a["content_type"], a["size"]) for a in message["attachments"]] == [
        (0, "data.bin", "application/octet-stream", len(binary)), (1, "page.html", "text/html", len(page))]
    # Reading does not mark it seen; only a PATCH does.
    assert bob.listing()["messages"][0]["seen"] is False

    download = bob.http.get(f"{API}/folders/INBOX/messages/{uid}/attachments/0")
    assert download.status_code == 200 and sha(download.content) == sha(binary)
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"].startswith("attachment;")
    html = bob.http.get(f"{API}/folders/INBOX/messages/{uid}/attachments/1")
    assert html.status_code == 200 and html.content == page
    assert html.headers["content-type"] == "text/html"  # its own type, no charset made up
    assert html.headers["content-disposition"].startswith('attachment; filename="page.html"')  # never inline
    assert html.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in html.headers["content-security-policy"]
    assert_problem(bob.http.get(f"{API}/folders/INBOX/messages/{uid}/attachments/2"), 404)


def test_send_multipart_with_files(pair):
    alice, bob = pair
    data = os.urandom(150_000)
    response = alice.http.post(f"{API}/send", data={"to": [bob.address], "cc": f"{alice.address}",
                                                    "subject": "files", "text": "two files"},
                               files=[("attachments", ("r\u00e9sum\u00e9.pdf", data, "application/pdf")),
                                      ("attachments", ("notes.txt", "caf\u00e9\n".encode(), "text/plain"))])
    assert response.status_code == 200, response.text
    sent = response.json()
    assert sorted(sent["delivered"]) == sorted([bob.address, alice.address])
    [uid] = bob.uids()
    message = bob.message(uid)
    assert message["cc"] == alice.address and message["text"].rstrip("\n") == "two files"
    assert [a["filename"] for a in message["attachments"]] == ["r\u00e9sum\u00e9.pdf", "notes.txt"]
    got = bob.http.get(f"{API}/folders/INBOX/messages/{uid}/attachments/0")
    assert sha(got.content) == sha(data) and got.headers["content-type"] == "application/pdf"
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf" in got.headers["content-disposition"]
    # Alice, in Cc, has it too, and a copy in Sent.
    assert len(alice.uids()) == 1 and len(alice.uids("Sent")) == 1
    assert bob.raw(uid) == alice.raw(alice.uids()[0])


def test_flags(pair):
    alice, bob = pair
    alice.send(to=[bob.address], subject="flag me", text="x")
    [uid] = bob.uids()
    url = f"{API}/folders/INBOX/messages/{uid}"
    assert bob.http.patch(url, json={"seen": True, "flagged": True}).status_code == 204
    item = bob.listing()["messages"][0]
    assert item["seen"] and item["flagged"] and not item["answered"]
    assert item["flags"] == ["\\Flagged", "\\Seen"]
    assert bob.http.patch(url, json={"flagged": False, "answered": True}).status_code == 204
    item = bob.message(uid)
    assert item["seen"] and not item["flagged"] and item["answered"]
    folders = {f["name"]: f for f in bob.http.get(f"{API}/folders").json()}
    assert folders["INBOX"]["messages"] == 1 and folders["INBOX"]["unseen"] == 0
    assert_problem(bob.http.patch(f"{API}/folders/INBOX/messages/{uid + 1}", json={"seen": True}), 404)
    assert_problem(bob.http.patch(url, json={"deleted": True}), 422)


def test_move_and_delete_to_trash(pair):
    alice, bob = pair
    for i in range(2):
        alice.send(to=[bob.address], subject=f"m{i}", text="x")
    first, second = sorted(bob.uids())
    raw = bob.raw(first)
    assert bob.http.post(f"{API}/folders", json={"name": "Archive.2024"}).status_code == 201
    moved = bob.http.post(f"{API}/folders/INBOX/messages/{first}/move", json={"to": "Archive.2024"})
    assert moved.status_code == 200, moved.text
    target = moved.json()
    assert target["folder"] == "Archive.2024"
    assert bob.raw(target["uid"], "Archive.2024") == raw
    assert bob.uids() == [second]
    assert_problem(bob.http.get(f"{API}/folders/INBOX/messages/{first}"), 404)
    assert_problem(bob.http.post(f"{API}/folders/INBOX/messages/{first}/move", json={"to": "Archive.2024"}), 404)
    assert_problem(bob.http.post(f"{API}/folders/INBOX/messages/{second}/move", json={"to": "Nowhere"}), 404)
    assert_problem(bob.http.post(f"{API}/folders/INBOX/messages/{second}/move", json={"to": "inbox"}), 422)

    deleted = bob.http.delete(f"{API}/folders/INBOX/messages/{second}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["expunged"] is False and deleted.json()["folder"] == "Trash"
    trash_uid = deleted.json()["uid"]
    assert bob.uids() == [] and bob.uids("Trash") == [trash_uid]
    gone = bob.http.delete(f"{API}/folders/Trash/messages/{trash_uid}")
    assert gone.status_code == 200 and gone.json() == {"expunged": True, "folder": None, "uid": None}
    assert bob.uids("Trash") == []
    assert_problem(bob.http.delete(f"{API}/folders/Trash/messages/{trash_uid}"), 404)
    assert bob.maildir_files("Trash") == []


def test_folders(pair):
    _, bob = pair
    http = bob.http
    names = [f["name"] for f in http.get(f"{API}/folders").json()]
    assert names[0] == "INBOX" and {"Sent", "Drafts", "Trash", "Junk"} <= set(names)
    special = {f["name"]: f["special_use"] for f in http.get(f"{API}/folders").json()}
    assert special["Sent"] == "\\Sent" and special["INBOX"] is None
    created = http.post(f"{API}/folders", json={"name": "Projects"})
    assert created.status_code == 201 and created.json()["messages"] == 0
    assert_problem(http.post(f"{API}/folders", json={"name": "Projects"}), 409)
    assert_problem(http.post(f"{API}/folders", json={"name": "a/b"}), 422)
    assert_problem(http.post(f"{API}/folders", json={"name": "a..b"}), 422)
    renamed = http.post(f"{API}/folders/Projects/rename", json={"to": "Work"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Work"
    assert_problem(http.post(f"{API}/folders/Sent/rename", json={"to": "Other"}), 403)
    assert_problem(http.delete(f"{API}/folders/INBOX"), 403)
    assert_problem(http.delete(f"{API}/folders/Projects"), 404)
    assert http.delete(f"{API}/folders/Work").status_code == 204
    assert "Work" not in [f["name"] for f in http.get(f"{API}/folders").json()]
    quota = http.get(f"{API}/quota").json()
    assert quota["used"] == 0 and quota["limit"] > 0


def test_pagination_newest_first(pair):
    alice, bob = pair
    for i in range(7):
        alice.send(to=[bob.address], subject=f"number {i}", text="x")
    first = bob.listing(limit=3)
    assert first["total"] == 7
    assert [m["subject"] for m in first["messages"]] == ["number 6", "number 5", "number 4"]
    second = bob.listing(limit=3, before_uid=first["next_before_uid"])
    third = bob.listing(limit=3, before_uid=second["next_before_uid"])
    assert [m["subject"] for m in second["messages"]] == ["number 3", "number 2", "number 1"]
    assert [m["subject"] for m in third["messages"]] == ["number 0"] and third["next_before_uid"] is None
    uids = [m["uid"] for page in (first, second, third) for m in page["messages"]]
    assert uids == sorted(uids, reverse=True) and len(set(uids)) == 7
    assert_problem(bob.http.get(f"{API}/folders/INBOX/messages", params={"limit": MAX_PAGE + 1}), 422)
    assert_problem(bob.http.get(f"{API}/folders/INBOX/messages", params={"limit": 0}), 422)
    assert_problem(bob.http.get(f"{API}/folders/Nope/messages"), 404)


def test_bad_sends(pair):
    alice, bob = pair
    http = alice.http

    def send(**body) -> httpx.Response:
        return http.post(f"{API}/send", json=body)

    body = assert_problem(send(to=[f"nobody-{secrets.token_hex(4)}@localhost"], subject="x", text="x"),
                          422, "unknown-recipient")
    assert "nobody-" in body["detail"]
    assert_problem(send(subject="no one", text="x"), 422)
    assert_problem(send(to=["not an address"], text="x"), 422)
    assert_problem(send(to=[bob.address], subject="a\r\nBcc: evil@example.org", text="x"), 422)
    assert_problem(send(to=[bob.address], text="x", attachments=[{"filename": "a", "content_base64": "%%%"}]), 422)
    assert_problem(send(to=[bob.address], text="x", unknown_field=1), 422)
    # Sending as someone else, or as a foreign address, is refused.
    assert_problem(send(to=[bob.address], text="x", **{"from": bob.address}), 403)
    assert_problem(send(to=[bob.address], text="x", **{"from": "ceo@example.org"}), 403)
    assert_problem(http.post(f"{API}/send", content=b"to=x", headers={"content-type": "text/plain"}), 415)
    assert bob.uids() == []
    # Own address with a display name and a +tag is fine.
    sent = alice.send(to=[bob.address], text="x", **{"from": f"Alice <{alice.name}+news@localhost>"})
    assert sent["delivered"] == [bob.address]
    assert message_from_bytes(bob.raw(bob.uids()[0]))["From"] == f"Alice <{alice.name}+news@localhost>"


def test_size_limit_is_413(make_server):
    server = make_server(args=("--mail-max-message", "64K"))
    alice, bob = Mailbox(server), Mailbox(server)
    big = base64.b64encode(os.urandom(70_000)).decode()
    response = alice.http.post(f"{API}/send", json={"to": [bob.address], "text": "x", "attachments": [
        {"filename": "big.bin", "content_base64": big}]})
    assert_problem(response, 413, "too-large")
    # Base64 of a multipart attachment: under the limit as sent, over it encoded.
    response = alice.http.post(f"{API}/send", data={"to": bob.address},
                               files=[("attachments", ("big.bin", os.urandom(60_000), "application/octet-stream"))])
    body = assert_problem(response, 413, "too-large")
    assert "mail.max_message" in body["detail"]
    # Refused by its declared length, before the body is read.
    response = alice.http.post(f"{API}/send", content=b"{}" + b" " * 200_000,
                               headers={"content-type": "application/json"})
    assert_problem(response, 413)
    assert bob.uids() == [] and alice.uids("Sent") == []
    assert alice.send(to=[bob.address], text="small enough")["delivered"] == [bob.address]
    alice.close()
    bob.close()


def test_attachments_larger_than_a_json_body(make_server):
    server = make_server()
    alice, bob = Mailbox(server), Mailbox(server)
    data = os.urandom(3_000_000)
    response = alice.http.post(f"{API}/send", data={"to": bob.address, "subject": "big"},
                               files=[("attachments", ("big.bin", data, "application/octet-stream"))])
    assert response.status_code == 200, response.text
    alice.send(to=[bob.address], subject="big json", attachments=[
        {"filename": "big.bin", "content_base64": base64.b64encode(data).decode()}])
    for uid in bob.uids():
        got = bob.http.get(f"{API}/folders/INBOX/messages/{uid}/attachments/0")
        assert sha(got.content) == sha(data)
    alice.close()
    bob.close()


def test_no_token_and_no_way_into_another_mailbox(server, pair):
    alice, bob = pair
    for i in range(3):
        alice.send(to=[bob.address], subject=f"for bob {i}", text="private")
    bob.send(to=[alice.address], subject="for alice", text="hers")
    bob_uids = sorted(bob.uids())
    assert len(bob_uids) == 3
    # Alice's listing is her own mail only: UID 1 in her INBOX is her message, and
    # the UIDs only Bob has are not found.
    [mine] = alice.listing()["messages"]
    assert mine["uid"] == bob_uids[0] and mine["subject"] == "for alice"
    assert alice.message(mine["uid"])["text"].rstrip("\n") == "hers"
    for uid in bob_uids[1:]:
        assert_problem(alice.http.get(f"{API}/folders/INBOX/messages/{uid}"), 404)
        assert_problem(alice.http.get(f"{API}/folders/INBOX/messages/{uid}/raw"), 404)
        assert_problem(alice.http.patch(f"{API}/folders/INBOX/messages/{uid}", json={"seen": True}), 404)
        assert_problem(alice.http.delete(f"{API}/folders/INBOX/messages/{uid}"), 404)
        assert_problem(alice.http.post(f"{API}/folders/INBOX/messages/{uid}/move", json={"to": "Junk"}), 404)
    # A folder name is always one of the caller's: Bob's name in it is just a name.
    for name in (bob.name, f"{bob.name}.INBOX", f"..%2F{bob.name}", "../" + bob.name):
        response = alice.http.get(f"{API}/folders/{name}/messages")
        assert response.status_code in (404, 422), response.text
    assert sorted(bob.uids()) == bob_uids and all(not m["seen"] for m in bob.listing()["messages"])

    with server.client() as anonymous:
        for method, path in [("GET", "/folders"), ("POST", "/folders"), ("GET", "/folders/INBOX/messages"),
                             ("GET", f"/folders/INBOX/messages/{bob_uids[0]}"),
                             ("GET", f"/folders/INBOX/messages/{bob_uids[0]}/raw"),
                             ("PATCH", f"/folders/INBOX/messages/{bob_uids[0]}"),
                             ("DELETE", f"/folders/INBOX/messages/{bob_uids[0]}"),
                             ("POST", "/send"), ("GET", "/quota"), ("GET", "/aliases")]:
            assert_problem(anonymous.request(method, API + path, json={}), 401)
    with server.client("agora_0000000000000000_nope") as forged:
        assert_problem(forged.get(f"{API}/folders/INBOX/messages"), 401)


def test_aliases_are_for_admins(server, pair):
    alice, bob = pair
    alias = f"sales-{secrets.token_hex(3)}@localhost"
    for response in (alice.http.get(f"{API}/aliases"),
                     alice.http.post(f"{API}/aliases", json={"address": alias, "user": alice.name}),
                     alice.http.delete(f"{API}/aliases/{alias}")):
        assert_problem(response, 403)

    with server.admin() as admin:
        added = admin.post(f"{API}/aliases", json={"address": alias.upper(), "user": bob.name})
        assert added.status_code == 201, added.text
        assert added.json()["address"] == alias and added.json()["user"] == bob.name
        assert_problem(admin.post(f"{API}/aliases", json={"address": alias, "user": alice.name}), 409)
        assert_problem(admin.post(f"{API}/aliases", json={"address": "x@example.org", "user": bob.name}), 422)
        assert_problem(admin.post(f"{API}/aliases", json={"address": "y@localhost", "user": "no-such-user"}), 404)
        assert alias in [item["address"] for item in admin.get(f"{API}/aliases").json()]

        # Mail to the alias reaches Bob, and Bob (only) may send as it.
        alice.send(to=[alias], subject="to sales", text="x")
        assert [m["subject"] for m in bob.listing()["messages"]] == ["to sales"]
        assert bob.send(to=[alice.address], text="x", **{"from": alias})["delivered"] == [alice.address]
        assert_problem(alice.http.post(f"{API}/send", json={"to": [bob.address], "text": "x", "from": alias}), 403)

        assert admin.delete(f"{API}/aliases/{alias}").status_code == 204
        assert_problem(admin.delete(f"{API}/aliases/{alias}"), 404)
        assert_problem(alice.http.post(f"{API}/send", json={"to": [alias], "text": "x"}), 422, "unknown-recipient")
        audit = admin.get("/api/v1/audit", params={"action": "mail.alias.add"}).json()["entries"]
        assert any(entry["target"] == alias for entry in audit)


def test_mail_sent_by_the_api_is_read_by_imap(pair):
    alice, bob = pair
    if "imap" not in bob.server.ports:
        pytest.skip("this server has no IMAP listener")
    sent = alice.send(to=[bob.address], subject="over imap", text="read me with imaplib",
                      attachments=[{"filename": "a.bin", "content_base64": base64.b64encode(b"\x00\x01").decode()}])
    [uid] = bob.uids()
    raw = bob.raw(uid)
    client = imaplib.IMAP4("127.0.0.1", bob.server.ports["imap"], timeout=15)
    try:
        client.login(bob.name, bob.password)
        client.select("INBOX")
        typ, data = client.uid("FETCH", str(uid), "(BODY.PEEK[] ENVELOPE)")
        assert typ == "OK" and data[0][1] == raw
        assert sent["message_id"].encode() in data[0][0] or sent["message_id"].encode() in data[0][1]
        # A flag set over the API is the flag IMAP sees, and the other way round.
        bob.http.patch(f"{API}/folders/INBOX/messages/{uid}", json={"flagged": True})
        client.noop()  # where a session takes in changes made elsewhere
        typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
        assert b"\\Flagged" in data[0]
        client.uid("STORE", str(uid), "+FLAGS", "(\\Seen)")
        assert bob.listing()["messages"][0]["seen"] is True
    finally:
        client.logout()
