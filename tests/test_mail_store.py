"""The mail domain in-process, on a real database of each backend: delivery and its
durability rules, UIDs and mod-sequences, flags mirrored in Maildir names, folders,
addresses, quota, and files other Maildir tools put in the tree."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agora import config as configuration
from agora.core.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge
from agora.core.runtime import Runtime
from agora.mail.store import QuotaExceeded, mail_store
from conftest import create_pg_database, drop_pg_database

RAW = (b"From: Ann <ann@localhost>\r\nTo: bob@localhost\r\nSubject: hello\r\n"
       b"Message-ID: <m1@localhost>\r\n\r\nBody line\r\n")


@pytest.fixture
def open_runtime(tmp_path, backend):
    urls: list[str] = []

    async def make(**flags: str) -> Runtime:
        values = {"data_dir": str(tmp_path / "data"), "identity.argon2_time_cost": "1",
                  "identity.argon2_memory_kib": "64", "mail.domains": "localhost,example.test", **flags}
        if backend == "postgresql":
            if not urls:
                urls.append(create_pg_database())
            values["database.url"] = urls[0]
        return await Runtime.open(configuration.load(values, environ={}))

    yield make
    for url in urls:
        drop_pg_database(url)


def run(coro):
    return asyncio.run(coro)


async def _users(runtime: Runtime, *names: str):
    return [await runtime.identity.create_user(name, "password-123") for name in names]


def _files(runtime: Runtime, user: str, folder: str = "") -> list[Path]:
    root = runtime.data_dir / "mail" / user / folder
    return sorted(p for sub in ("new", "cur") for p in (root / sub).iterdir())


def test_delivery_is_durable_and_readable_by_uid(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            await _users(runtime, "ann", "bob")
            store = mail_store(runtime)
            before = datetime.now(timezone.utc)
            result = await store.deliver(["ann", "bob"], RAW)
            assert [(d.user, d.uid, d.duplicate) for d in result] == [("ann", 1, False), ("bob", 1, False)]
            bob = await runtime.identity.get_user("bob")
            folder, messages = await store.messages(bob, "INBOX")
            assert [m.uid for m in messages] == [1] and folder.uidnext == 2
            # (On SQLite written without SQLAlchemy: read back through it, the same instant.)
            assert before <= messages[0].internaldate <= datetime.now(timezone.utc)
            assert messages[0].size == len(RAW) and messages[0].flags == frozenset()
            assert messages[0].summary.subject == "hello"
            assert await store.read(bob, "inbox", 1) == RAW
            [path] = _files(runtime, "bob")
            assert path.parent.name == "new" and path.read_bytes() == RAW
            assert f",S={len(RAW)}" in path.name
            assert not list((runtime.data_dir / "mail" / "bob" / "tmp").iterdir())
        finally:
            await runtime.close()

    run(scenario())


def test_a_retried_delivery_is_not_duplicated_and_failures_store_nothing(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            await _users(runtime, "ann", "bob")
            store = mail_store(runtime)
            await store.deliver(["ann"], RAW, dedupe_key="k1")
            again = await store.deliver(["ann", "bob"], RAW, dedupe_key="k1")
            assert [(d.user, d.duplicate) for d in again] == [("ann", True), ("bob", False)]
            assert len(_files(runtime, "ann")) == 1 and len(_files(runtime, "bob")) == 1
            # All or nothing: one unknown recipient and nobody gets it.
            with pytest.raises(NotFound):
                await store.deliver(["ann", "nobody"], RAW + b"x")
            assert len(_files(runtime, "ann")) == 1
        finally:
            await runtime.close()

    run(scenario())


def test_quota_and_size_limits_store_nothing(open_runtime):
    async def scenario():
        runtime = await open_runtime(**{"mail.quota": str(len(RAW) + 10), "mail.max_message": "1K"})
        try:
            [ann] = await _users(runtime, "ann")
            store = mail_store(runtime)
            await store.deliver(["ann"], RAW)
            with pytest.raises(QuotaExceeded):
                await store.deliver(["ann"], RAW + b"more")
            with pytest.raises(QuotaExceeded):
                await store.append(ann, "Drafts", RAW)
            with pytest.raises(TooLarge):
                await store.deliver(["ann"], b"x" * 2000)
            assert not await store.can_receive("ann", len(RAW))
            assert len(_files(runtime, "ann")) == 1
            assert not list((runtime.data_dir / "mail" / "ann" / ".Drafts" / "new").iterdir())
            assert await store.usage(ann) == (len(RAW), len(RAW) + 10)
        finally:
            await runtime.close()

    run(scenario())


def test_flags_modseq_and_maildir_names(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            [ann] = await _users(runtime, "ann")
            store = mail_store(runtime)
            await store.deliver(["ann"], RAW)
            await store.deliver(["ann"], RAW + b"2")
            folder, _ = await store.messages(ann, "INBOX")
            changed = await store.store_flags(ann, "INBOX", [1], ["\\Seen", "\\Flagged", "$label"], "add")
            assert [m.uid for m in changed] == [1] and changed[0].modseq > folder.highestmodseq
            assert await store.store_flags(ann, "INBOX", [1], ["\\seen"], "add") == []  # no change, no modseq
            names = [p.name for p in _files(runtime, "ann")]
            assert any(name.endswith(":2,FS") for name in names)
            changes = await store.changes(ann, "INBOX", folder.highestmodseq)
            assert [m.uid for m in changes.updated] == [1] and changes.expunged == []
            assert changes.updated[0].flags == {"\\Seen", "\\Flagged", "$label"}
            await store.store_flags(ann, "INBOX", [1, 2], ["\\Deleted"], "set")
            assert await store.read(ann, "INBOX", 1) == RAW  # still found after renames
            assert await store.expunge(ann, "INBOX", [2]) == [2]
            assert await store.expunge(ann, "INBOX") == [1]
            assert _files(runtime, "ann") == []
            changes = await store.changes(ann, "INBOX", folder.highestmodseq)
            assert changes.expunged == [1, 2] and changes.updated == []
            with pytest.raises(NotFound):
                await store.read(ann, "INBOX", 1)
            with pytest.raises(InvalidInput):
                await store.store_flags(ann, "INBOX", [1], ["\\Seen"], "toggle")
        finally:
            await runtime.close()

    run(scenario())


def test_copy_and_move_give_new_uids_in_the_target(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            [ann] = await _users(runtime, "ann")
            store = mail_store(runtime)
            for n in range(3):
                await store.deliver(["ann"], RAW + str(n).encode())
            await store.store_flags(ann, "INBOX", [2], ["\\Flagged"], "add")
            trash = await store.folder(ann, "Trash")
            validity, pairs = await store.copy(ann, "INBOX", [2, 3, 99], "Trash")
            assert validity == trash.uidvalidity and pairs == [(2, 1), (3, 2)]
            _, copied = await store.messages(ann, "Trash")
            assert copied[0].flags == {"\\Flagged"}
            assert await store.read(ann, "Trash", 2) == RAW + b"2"
            _, pairs = await store.move(ann, "INBOX", [1], "Trash")
            assert pairs == [(1, 3)]
            _, inbox = await store.messages(ann, "INBOX")
            assert [m.uid for m in inbox] == [2, 3]
            with pytest.raises(InvalidInput):
                await store.move(ann, "INBOX", [2], "inbox")
            with pytest.raises(NotFound):
                await store.copy(ann, "INBOX", [2], "Nowhere")
        finally:
            await runtime.close()

    run(scenario())


def test_folders_create_rename_delete(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            [ann] = await _users(runtime, "ann")
            store = mail_store(runtime)
            names = [f.name for f in await store.folders(ann)]
            assert set(names) == {"INBOX", "Sent", "Drafts", "Trash", "Junk"}
            specials = {f.name: f.special_use for f in await store.folders(ann)}
            assert specials["Sent"] == "\\Sent" and specials["INBOX"] is None
            await store.create_folder(ann, "Projects")
            await store.create_folder(ann, "Projects.2024")
            await store.append(ann, "Projects.2024", RAW, ["\\Seen"])
            with pytest.raises(Conflict):
                await store.create_folder(ann, "Projects")
            for bad in ("", "a..b", ".x", "x.", "a/b", "a*", "tab\there", "x" * 300):
                with pytest.raises(InvalidInput):
                    await store.create_folder(ann, bad)
            with pytest.raises(Conflict):
                await store.delete_folder(ann, "Projects")  # has a child
            for protected in ("INBOX", "Sent", "Trash"):
                with pytest.raises(Forbidden):
                    await store.delete_folder(ann, protected)
            await store.rename_folder(ann, "Projects", "Work")
            names = {f.name for f in await store.folders(ann)}
            assert {"Work", "Work.2024"} <= names and "Projects" not in names
            assert await store.read(ann, "Work.2024", 1) == RAW
            assert (runtime.data_dir / "mail" / "ann" / ".Work.2024" / "cur").is_dir()
            await store.delete_folder(ann, "Work.2024")
            assert not (runtime.data_dir / "mail" / "ann" / ".Work.2024").exists()
            await store.subscribe(ann, "Work", False)
            assert not (await store.folder(ann, "Work")).subscribed
            # Renaming INBOX moves its messages and leaves it empty.
            await store.deliver(["ann"], RAW)
            await store.rename_folder(ann, "INBOX", "Old")
            assert (await store.status(ann, "INBOX")).messages == 0
            assert (await store.status(ann, "Old")).messages == 1
        finally:
            await runtime.close()

    run(scenario())


def test_uids_survive_a_restart_and_other_tools_files_are_indexed(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            [ann] = await _users(runtime, "ann")
            store = mail_store(runtime)
            await store.deliver(["ann"], RAW)
            await store.deliver(["ann"], RAW + b"2")
            before, _ = await store.messages(ann, "INBOX")
        finally:
            await runtime.close()
        inbox = runtime.data_dir / "mail" / "ann"
        # Another Maildir tool delivers one message and deletes another.
        external = inbox / "new" / "1700000000.other.host"
        external.write_bytes(RAW + b"external")
        os.utime(external, (1700000000, 1700000000))  # delivered a while ago
        fresh = inbox / "new" / "1800000000.in-flight.host"
        fresh.write_bytes(RAW + b"in flight")  # maybe another node's, not yet committed
        first = next(p for p in _files(runtime, "ann") if p.read_bytes() == RAW)
        first.unlink()
        runtime = await open_runtime()
        try:
            store = mail_store(runtime)
            ann = await runtime.identity.get_user("ann")
            folder, messages = await store.messages(ann, "INBOX")
            assert folder.uidvalidity == before.uidvalidity
            assert [m.uid for m in messages] == [2, 3]
            assert await store.read(ann, "INBOX", 3) == RAW + b"external"
            os.utime(fresh, (1700000000, 1700000000))  # a while later, it is settled
            _, messages = await store.messages(ann, "INBOX")
            assert [m.uid for m in messages] == [2, 3, 4]
            assert (await store.changes(ann, "INBOX", before.highestmodseq)).expunged == [1]
            # A flag set by another tool (renamed into cur/ with :2,S) is picked up.
            os.rename(external, inbox / "cur" / "1700000000.other.host:2,S")
            _, messages = await store.messages(ann, "INBOX")
            assert messages[1].flags == {"\\Seen"}
        finally:
            await runtime.close()

    run(scenario())


def test_a_mailbox_copied_in_is_indexed_in_bulk_and_flag_changes_too(open_runtime):
    """Hundreds of files another tool put there: one scan indexes them in name order,
    and renames by that tool (flags it can spell) keep the keywords only Agora knows."""
    count = 400

    async def scenario():
        runtime = await open_runtime()
        try:
            [ann] = await _users(runtime, "ann")
            store = mail_store(runtime)
            await store.deliver(["ann"], RAW)  # makes the Maildir
            inbox = runtime.data_dir / "mail" / "ann"
            for number in range(count):
                path = inbox / "cur" / f"1700000000.M{number:04d}.copied:2,{'F' if number % 2 else ''}"
                path.write_bytes(RAW.replace(b"<m1@", f"<copied-{number}@".encode()))
                os.utime(path, (1700000000, 1700000000))
            _, messages = await store.messages(ann, "INBOX")
            assert [m.uid for m in messages] == list(range(1, count + 2))
            assert messages[2].flags == {"\\Flagged"} and messages[1].flags == set()
            assert (await store.read(ann, "INBOX", count + 1)).count(f"<copied-{count - 1}@".encode()) == 1
            await store.store_flags(ann, "INBOX", [2, 3], ["$Important"], "add")
            # The other tool marks them all read.
            for path in (inbox / "cur").iterdir():
                if ".copied:2," in path.name:
                    path.rename(path.with_name(path.name.split(":2,")[0] + ":2,S" + path.name.split(":2,")[1]))
            _, messages = await store.messages(ann, "INBOX")
            assert all("\\Seen" in m.flags for m in messages[1:])
            assert messages[1].flags == {"\\Seen", "$Important"}
            assert messages[2].flags == {"\\Seen", "\\Flagged", "$Important"}
            assert "\\Seen" not in messages[0].flags  # Agora's own delivery, not renamed
        finally:
            await runtime.close()

    run(scenario())


def test_watch_wakes_on_delivery(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            [ann] = await _users(runtime, "ann")
            store = mail_store(runtime)
            async with store.watch(ann, "INBOX") as watch:
                assert not await watch.wait(0.05)
                await store.deliver(["ann"], RAW)
                assert await watch.wait(1)
        finally:
            await runtime.close()

    run(scenario())


def test_addresses_aliases_and_sending_rights(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            ann, bob = await _users(runtime, "ann", "bob")
            await runtime.identity.create_user("boss", "password-123", role="admin")
            store = mail_store(runtime)
            assert await store.resolve("Ann@LOCALHOST") == "ann"
            assert await store.resolve("ann+lists@example.test") == "ann"
            assert await store.resolve("ann@elsewhere.org") is None
            assert await store.resolve("nobody@localhost") is None
            assert await store.resolve("not an address") is None
            assert await store.resolve("postmaster@localhost") == "boss"
            await store.addresses.add_alias("sales@example.test", "bob")
            await store.addresses.add_alias("@example.test", "ann")
            with pytest.raises(InvalidInput):
                await store.addresses.add_alias("x@elsewhere.org", "bob")
            with pytest.raises(Conflict):
                await store.addresses.add_alias("SALES@example.test", "ann")
            assert await store.resolve("sales@example.test") == "bob"
            assert await store.resolve("anything@example.test") == "ann"
            assert await store.resolve("anything@localhost") is None
            assert await store.owns_address(bob, "sales@example.test")
            assert await store.owns_address(ann, "ann@localhost")
            assert not await store.owns_address(ann, "bob@localhost")
            assert not await store.owns_address(ann, "sales@example.test")
            assert not await store.owns_address(ann, "ann@elsewhere.org")
            await store.addresses.remove_alias("sales@example.test")
            assert await store.resolve("sales@example.test") == "ann"  # the catch-all now
            assert store.address_of(ann) == "ann@localhost"
        finally:
            await runtime.close()

    run(scenario())


def test_deleting_a_user_deletes_their_mail(open_runtime):
    async def scenario():
        runtime = await open_runtime()
        try:
            from agora.mail.store import forget_user_mail
            runtime.identity.deletion_hooks.append(forget_user_mail(runtime))
            await _users(runtime, "ann")
            await mail_store(runtime).deliver(["ann"], RAW)
            assert (runtime.data_dir / "mail" / "ann").is_dir()
            await runtime.identity.delete_user("ann")
            assert not (runtime.data_dir / "mail" / "ann").exists()
        finally:
            await runtime.close()

    run(scenario())


def test_a_change_on_one_node_wakes_a_watcher_on_another(open_runtime, backend):
    if backend != "postgresql":
        pytest.skip("nodes share a database only on PostgreSQL (LISTEN/NOTIFY)")

    async def scenario():
        node_a = await open_runtime()
        node_b = await open_runtime()
        try:
            [ann] = await _users(node_a, "ann")
            store_a, store_b = mail_store(node_a), mail_store(node_b)
            await store_a.notices.start()
            try:
                async with store_a.watch(ann, "INBOX") as watch:
                    await store_b.deliver(["ann"], RAW)
                    assert await watch.wait(2)
                    _, messages = await store_a.messages(ann, "INBOX")
                    assert [m.uid for m in messages] == [1]
            finally:
                await store_a.notices.stop()
        finally:
            await node_a.close()
            await node_b.close()

    run(scenario())
