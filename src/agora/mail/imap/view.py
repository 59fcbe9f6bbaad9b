"""A session's view of its selected mailbox: its own message numbers, and the changes
others made (deliveries, other sessions, other protocols) reported as untagged
EXISTS/EXPUNGE/FETCH when the protocol allows (RFC 3501 section 7.4.1, 5.2)."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from pathlib import Path
from typing import Any, Callable, Iterator

from agora.mail.imap import responses, watch
from agora.mail.imap.cache import shared
from agora.mail.imap.sequence import SequenceSet


class MailboxView:
    def __init__(self, store: Any, user: Any, name: str, readonly: bool, search_cache: int):
        self.store = store
        self.shared = shared(store, search_cache)
        self.user = user
        self.name = name
        self.readonly = readonly
        self.folder: Any = None
        self.uids: list[int] = []
        self.metas: list[Any] = []
        self.modseq = 0
        self.recent_from = 0      # UIDs from here arrived while selected: \Recent to us
        self.expunged: set[int] = set()  # expunged elsewhere, not yet reported
        self.dirty = False        # the folder changed since the last sync
        self.on_change: Callable[[], None] | None = None  # what IDLE wants done then
        self._hub: Any = None

    async def open(self) -> None:
        # Watch first, so that nothing that happens while the list loads goes unseen.
        folder = await self.store.folder(self.user, self.name)
        self._hub = await watch.join(self, self.store, self.user, self.name, folder.id)
        try:
            folder, metas = await self.store.messages(self.user, self.name)
        except BaseException:
            await self.close()
            raise
        self.folder = folder
        self.metas = metas
        self.uids = [m.uid for m in metas]
        self.modseq = folder.highestmodseq
        self.recent_from = folder.uidnext

    async def close(self) -> None:
        if self._hub is not None:
            hub, self._hub = self._hub, None
            await watch.leave(self, hub)

    def notify(self) -> None:
        """The folder changed (called by the folder's hub)."""
        self.dirty = True
        if self.on_change is not None:
            self.on_change()

    # -- numbers ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.uids)

    def index(self, uid: int) -> int | None:
        i = bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else None

    def select(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """Indexes (0-based) of the messages a set names; ValueError for a message number
        past the end (RFC 3501 asks for BAD there; UIDs not present are ignored)."""
        if uid:
            picked = sequence.select_uids(self.uids)
            if len(picked) == len(self.uids):
                return list(range(len(self.uids)))
            return [self.index(u) for u in picked]  # type: ignore[misc]
        return [n - 1 for n in sequence.sequence_numbers(len(self.uids))]

    def recent(self, uid: int) -> bool:
        return uid >= self.recent_from

    def recent_count(self) -> int:
        return len(self.uids) - bisect_left(self.uids, self.recent_from)

    def flags(self, i: int) -> frozenset[str]:
        meta = self.metas[i]
        return meta.flags | {"\\Recent"} if meta.uid >= self.recent_from else meta.flags

    def replace(self, meta: Any) -> int | None:
        i = self.index(meta.uid)
        if i is not None:
            self.metas[i] = meta
        return i

    def remove(self, uids: list[int], out: bytearray) -> None:
        """Drop expunged messages, reporting each with its number at that moment."""
        for uid in sorted(uids):
            i = self.index(uid)
            if i is not None:
                del self.uids[i]
                del self.metas[i]
                out += b"* %d EXPUNGE\r\n" % (i + 1)
            self.expunged.discard(uid)

    # -- reading messages ------------------------------------------------------------

    def batches(self, indexes: list[int], max_count: int = 64, max_bytes: int = 8 << 20) -> Iterator[list[int]]:
        """Indexes in runs that are read together (few messages when they are big)."""
        batch: list[int] = []
        size = 0
        for i in indexes:
            if batch and (len(batch) >= max_count or size + self.metas[i].size > max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(i)
            size += self.metas[i].size
        if batch:
            yield batch

    async def read(self, uids: list[int]) -> list[bytes | None]:
        """The messages' bytes (None for one expunged meanwhile), read together."""
        # One query for all the file names, one thread hop for all the reads.
        found = await self.store.paths(self.user, self.name, uids)
        return await asyncio.to_thread(_read_files, [found.get(uid) for uid in uids])

    # -- changes ---------------------------------------------------------------------

    async def sync(self, out: bytearray, *, expunge: bool, force: bool = False) -> None:
        """Report what changed since the last sync into ``out``. Expunges wait while
        ``expunge`` is False (during FETCH, STORE, SEARCH: numbers must hold still)."""
        if force or self.dirty:
            self.dirty = False
            changes = await _shared_changes(self, self.modseq)
            self.modseq = max(self.modseq, changes.highestmodseq)
            known = set(self.uids)
            self.expunged.update(u for u in changes.expunged if u in known)
            largest = self.uids[-1] if self.uids else 0
            added = 0
            for meta in changes.updated:
                if meta.uid > largest:
                    self.uids.append(meta.uid)
                    self.metas.append(meta)
                    largest = meta.uid
                    added += 1
                    continue
                i = self.index(meta.uid)
                if i is None or meta.uid in self.expunged:
                    continue
                old = self.metas[i]
                self.metas[i] = meta
                if old.flags != meta.flags:
                    out += b"* %d FETCH (UID %d FLAGS %s)\r\n" % (i + 1, meta.uid, responses.flags(self.flags(i)))
            if added:
                out += b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(self.uids), self.recent_count())
        if expunge and self.expunged:
            self.remove(sorted(self.expunged), out)


def _read_files(paths: list[Path | None]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for path in paths:
        try:
            out.append(path.read_bytes() if path is not None else None)
        except FileNotFoundError:
            out.append(None)
    return out


class _Query:
    __slots__ = ("task", "open")

    def __init__(self) -> None:
        self.open = True
        self.task: asyncio.Task[Any] | None = None


async def _shared_changes(view: MailboxView, since: int) -> Any:
    """store.changes(), shared by the sessions that ask the same question at once (a
    delivery wakes every IDLE session on the folder together; one query serves all).

    A session may join a query only while it has not started: its snapshot is then
    taken after the change that woke the session was committed (changes are notified
    after their commit)."""
    queries = view.shared.queries
    key = (view.folder.id, since)
    query = queries.get(key)
    if query is None or not query.open:
        query = _Query()
        store, user, name = view.store, view.user, view.name

        async def run() -> Any:
            query.open = False
            return await store.changes(user, name, since)

        query.task = asyncio.ensure_future(run())
        queries[key] = query
        query.task.add_done_callback(lambda _: queries.pop(key, None) if queries.get(key) is query else None)
    assert query.task is not None
    return await asyncio.shield(query.task)
