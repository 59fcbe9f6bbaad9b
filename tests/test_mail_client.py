"""The Python client's mail sub-API (``client.mail``), blocking and async, against a
real server: send with attachments from paths, list, read, raw, attachments, flags,
move, delete, folders, quota, aliases; refusals as the client's exceptions."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from email import message_from_bytes

import pytest

from agora.client import (AsyncClient, Client, Conflict, Forbidden, InvalidRequest, MailMessage, NotFound,
                          TooLarge, Unauthorized)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def clients(server):
    """Two users' clients: (alice, bob)."""
    made = []
    for _ in range(2):
        name, password = server.create_user()
        client = Client(server.url)
        client.login(name, password)
        made.append(client)
    yield tuple(made)
    for client in made:
        client.close()


def address(client: Client) -> str:
    return f"{client.me().name}@localhost"


def test_send_read_and_manage(clients, tmp_path):
    alice, bob = clients
    report = tmp_path / "report.pdf"
    report.write_bytes(os.urandom(120_000))
    notes = tmp_path / "notes.txt"
    notes.write_text("caf\u00e9\n", encoding="utf-8")

    sent = alice.mail.send(address(bob), "Report", "See attached.\n", attachments=[report, notes,
                                                                                  ("inline.bin", b"\x00\xff")])
    assert sent.delivered == [address(bob)] and sent.queued == [] and sent.sent_uid

    [item] = bob.mail.messages()
    assert item.subject == "Report" and item.from_ == address(alice) and not item.seen and item.has_attachments
    message = bob.mail.read("INBOX", item.uid)
    assert isinstance(message, MailMessage) and message.message_id == sent.message_id
    assert message.text == "See attached.\n"
    assert [(a.filename, a.content_type) for a in message.attachments] == [
        ("report.pdf", "application/pdf"), ("notes.txt", "text/plain"), ("inline.bin", "application/octet-stream")]
    assert sha(bob.mail.attachment("INBOX", item.uid, 0)) == sha(report.read_bytes())
    assert bob.mail.attachment("INBOX", item.uid, 1) == notes.read_bytes()
    raw = bob.mail.raw("INBOX", item.uid)
    assert raw == alice.mail.raw("Sent", sent.sent_uid)
    assert message_from_bytes(raw)["Subject"] == "Report"

    bob.mail.flag("INBOX", item.uid, seen=True, flagged=True)
    [item] = bob.mail.messages("INBOX", 10)
    assert item.seen and item.flagged and item.flags == ["\\Flagged", "\\Seen"]
    bob.mail.flag("INBOX", item.uid, flagged=False)
    assert not bob.mail.read("INBOX", item.uid).flagged

    folder = bob.mail.create_folder("Keep")
    assert folder.name == "Keep" and folder.messages == 0
    with pytest.raises(Conflict):
        bob.mail.create_folder("Keep")
    moved = bob.mail.move("INBOX", item.uid, "Keep")
    assert moved.folder == "Keep" and bob.mail.raw("Keep", moved.uid) == raw
    assert {f.name: f.messages for f in bob.mail.folders()}["Keep"] == 1
    deleted = bob.mail.delete("Keep", moved.uid)
    assert not deleted.expunged and deleted.folder == "Trash"
    assert bob.mail.delete("Trash", deleted.uid).expunged
    with pytest.raises(NotFound):
        bob.mail.read("Trash", deleted.uid)
    assert bob.mail.rename_folder("Keep", "Kept").name == "Kept"
    bob.mail.delete_folder("Kept")
    assert "Kept" not in [f.name for f in bob.mail.folders()]
    quota = alice.mail.quota()
    assert quota.used >= len(raw) and quota.limit > quota.used


def test_pages(clients):
    alice, bob = clients
    for i in range(5):
        alice.mail.send([address(bob)], f"n{i}", "x")
    page = bob.mail.page("INBOX", 2)
    assert [m.subject for m in page.messages] == ["n4", "n3"] and page.total == 5
    subjects = []
    while True:
        subjects += [m.subject for m in page.messages]
        if page.next_before_uid is None:
            break
        page = bob.mail.page("INBOX", 2, before_uid=page.next_before_uid)
    assert subjects == ["n4", "n3", "n2", "n1", "n0"]


def test_refusals_are_exceptions(server, clients):
    alice, bob = clients
    with pytest.raises(InvalidRequest) as unknown:
        alice.mail.send(f"nobody-{secrets.token_hex(4)}@localhost", "x", "x")
    assert unknown.value.type == "urn:agora:problem:unknown-recipient"
    with pytest.raises(Forbidden):
        alice.mail.send(address(bob), "x", "x", sender=address(bob))
    with pytest.raises(Forbidden):
        alice.mail.aliases()
    with pytest.raises(NotFound):
        alice.mail.read("INBOX", 99)
    with pytest.raises(NotFound):
        alice.mail.messages("No such folder")
    with Client(server.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.mail.folders()


def test_size_limit(make_server, tmp_path):
    server = make_server(args=("--mail-max-message", "64K"))
    name, password = server.create_user()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(100_000))
    with Client(server.url) as client:
        client.login(name, password)
        with pytest.raises(TooLarge) as error:
            client.mail.send(f"{name}@localhost", "big", "x", attachments=[big])
        assert "mail.max_message" in error.value.message
        assert client.mail.messages() == []


def test_aliases_for_admins(server, clients):
    _, bob = clients
    alias = f"help-{secrets.token_hex(3)}@localhost"
    with Client(server.url, server.admin_token) as admin:
        created = admin.mail.add_alias(alias, bob.me().name)
        assert created.address == alias and created.user == bob.me().name
        assert alias in [a.address for a in admin.mail.aliases()]
        admin.mail.send(alias, "help", "please")
        assert [m.subject for m in bob.mail.messages()] == ["help"]
        admin.mail.remove_alias(alias)
        with pytest.raises(NotFound):
            admin.mail.remove_alias(alias)


def test_async_client(server, tmp_path):
    name, password = server.create_user()
    attachment = tmp_path / "a.bin"
    attachment.write_bytes(os.urandom(5000))

    async def run() -> None:
        async with AsyncClient(server.url) as client:
            await client.login(name, password)
            me = f"{name}@localhost"
            sent = await client.mail.send([me], "to myself", "hello", attachments=[attachment])
            assert sent.delivered == [me]
            sent = await client.mail.send(me, "plain", "no files")
            [newest, older] = await client.mail.messages()
            assert (newest.subject, older.subject) == ("plain", "to myself")
            message = await client.mail.read("INBOX", older.uid)
            assert message.attachments[0].filename == "a.bin"
            assert await client.mail.attachment("INBOX", older.uid, 0) == attachment.read_bytes()
            raw = await client.mail.raw("INBOX", newest.uid)
            assert raw == await client.mail.raw("Sent", sent.sent_uid)
            await client.mail.flag("INBOX", newest.uid, seen=True)
            assert (await client.mail.page()).messages[0].seen
            moved = await client.mail.move("INBOX", newest.uid, "Junk")
            assert (await client.mail.delete("Junk", moved.uid)).folder == "Trash"
            assert [f.name for f in await client.mail.folders()][0] == "INBOX"
            assert (await client.mail.quota()).used > 0
            with pytest.raises(Forbidden):
                await client.mail.aliases()

    asyncio.run(run())
