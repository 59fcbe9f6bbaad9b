"""Each user's mail: folders, messages, flags and IMAP UIDs, for every protocol at once.

SMTP delivers here, IMAP, POP3 and the HTTP API read and change through here; none of
them touches a Maildir or a mail table itself. Messages are files in a Maildir
(``maildir.py``); what IMAP needs to be stable across restarts (UIDVALIDITY, UIDs,
flags, mod-sequences) and a parsed summary of each message (envelope and structure, so
a FETCH of them opens no file) live in the metadata database (``tables.py``).

Order of a write, so that a crash loses nothing acknowledged and shows nothing half
written: the file is written and fsynced under ``tmp``, renamed into place and its
directory fsynced, then the row is committed, then the caller is told. A file whose row
was never committed is found by the next scan of its folder and indexed then.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from agora.core.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge
from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.core.tables import users, utcnow
from agora.mail import delivery_commit, maildir, notify
from agora.mail.addresses import Addresses
from agora.mail.group_commit import GroupCommit
from agora.mail.message import Summary, summarize
from agora.mail.tables import (mail_deliveries, mail_expunged, mail_folders, mail_messages)

log = logging.getLogger("agora.mail")

INBOX = "INBOX"
DELIMITER = "."
# Folders every user has; they cannot be deleted or renamed, so clients can rely on them.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
MAX_FOLDER_NAME = 200  # bytes of UTF-8; the Maildir++ directory name adds one
MAX_FOLDERS = 1000  # per user
CHUNK = 500  # ids per IN (...) clause: SQLite caps bound parameters
# A message file unknown to the database is indexed by a folder scan only once it is this
# old: younger, it may be a delivery on another node that has yet to commit its row.
IN_FLIGHT_GRACE = 3.0
USAGE_TTL = 30.0  # seconds a user's cached mail usage is trusted (see _usage_of)
INLINE_PARSE = 256 * 1024  # bytes of message parsed on the event loop rather than in a thread
INLINE_HEADER = 16 * 1024  # ... if its header ends within this many bytes
# Threads that write message files: each mostly waits on fsync, so more of them than
# cores lets concurrent deliveries' fsyncs overlap (the default pool has cores + 4).
IO_THREADS = 32
USER_TTL = 10.0  # seconds a user name -> id lookup is reused by deliver()
# pg_advisory_xact_lock(QUOTA_LOCK, user id): on PostgreSQL (several nodes), the
# transactions that add mail to one user take turns to check the quota against what is
# committed, so that nodes that each claimed room in their own process cannot pass it
# together.
QUOTA_LOCK = 0x6D61696C  # "mail"


@dataclass(frozen=True)
class _Batch:
    """One delivery waiting for the group commit: a message for one or more users."""
    folder: str
    digest: str
    size: int
    summary: str
    recipients: list[tuple[int, str, str]]  # (user id, user name, Maildir base name)


class QuotaExceeded(TooLarge):
    slug, title = "mail-quota-exceeded", "Mailbox full"


@dataclass(frozen=True)
class Folder:
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    special_use: str | None


@dataclass(frozen=True)
class FolderStatus:
    messages: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int


@dataclass(frozen=True)
class MessageMeta:
    uid: int
    flags: frozenset[str]
    internaldate: datetime
    size: int
    modseq: int
    summary_json: str

    @cached_property
    def summary(self) -> Summary:
        # Parsed on first use: a SELECT of 10,000 messages needs flags and UIDs only.
        return Summary.from_json(self.summary_json)


@dataclass(frozen=True)
class Changes:
    highestmodseq: int
    updated: list[MessageMeta]
    expunged: list[int]


@dataclass(frozen=True)
class Delivery:
    user: str
    folder: str
    uid: int
    duplicate: bool


def _flags(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _flag_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(set(flags), key=str.lower))


def _meta(row: Any) -> MessageMeta:
    return MessageMeta(row.uid, _flags(row.flags), row.internaldate, row.size, row.modseq, row.summary)


def _chunks(items: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def normalize_folder(name: str) -> str:
    """The stored spelling of a folder name, or InvalidInput. ``inbox`` is ``INBOX``."""
    name = name.strip()
    head, _, rest = name.partition(DELIMITER)
    if head.upper() == INBOX:
        name = INBOX + (DELIMITER + rest if rest else "")
    if not name:
        raise InvalidInput("empty folder name")
    if len(name.encode()) > MAX_FOLDER_NAME:
        raise InvalidInput(f"folder name longer than {MAX_FOLDER_NAME} bytes")
    if any(ord(c) < 32 or ord(c) == 127 or c in "/\\*%" for c in name):
        raise InvalidInput("folder names may not contain control characters, / \\ * or %")
    if name.startswith(DELIMITER) or name.endswith(DELIMITER) or DELIMITER * 2 in name:
        raise InvalidInput("folder name with an empty level")
    return name


class Watch:
    """Wakes a waiting session when its folder changes (a delivery, another session)."""

    def __init__(self, store: "MailStore", user: User, name: str):
        self.store, self.user, self.name = store, user, name
        self.event = asyncio.Event()
        self.folder_id = 0

    async def __aenter__(self) -> "Watch":
        self.folder_id = (await self.store.folder(self.user, self.name)).id
        self.store._watchers.setdefault(self.folder_id, set()).add(self.event)
        return self

    async def __aexit__(self, *exc: object) -> None:
        watchers = self.store._watchers.get(self.folder_id)
        if watchers is not None:
            watchers.discard(self.event)
            if not watchers:
                del self.store._watchers[self.folder_id]

    async def wait(self, timeout: float | None = None) -> bool:
        """True when the folder changed since the last wait, False on timeout."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self.event.clear()
        return True


class MailStore:
    def __init__(self, runtime: Runtime):
        config = runtime.config.mail
        self.db = runtime.db
        self.root = runtime.data_dir / "mail"
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.quota = config.quota
        self.max_message = config.max_message
        self.dedupe_window = config.dedupe_window
        self.addresses = Addresses(runtime.db, config.domains)
        self._ready: set[int] = set()  # users whose standard folders exist
        self._stamps: dict[int, tuple[int, int]] = {}  # folder id -> Maildir stamp at last scan
        self._scan_locks: dict[int, asyncio.Lock] = {}
        self._pending: set[str] = set()  # base names written but not yet committed
        self._watchers: dict[int, set[asyncio.Event]] = {}
        self.notices = notify.Listener(runtime.db, self._notify)
        self._usage: dict[int, tuple[float, int]] = {}  # user id -> (when, bytes)
        # Bytes claimed by writes in flight (not yet committed), per user id: the quota
        # is checked against usage + these, so concurrent deliveries cannot pass it
        # together. _committing counts claims whose rows may be committed but not yet
        # counted, and _epochs changes with each: a usage read that overlapped either is
        # not cached, as it may count a message twice or not at all.
        self._reserved: dict[int, int] = {}
        self._committing: dict[int, int] = {}
        self._epochs: dict[int, int] = {}
        self._ids: dict[str, tuple[float, int]] = {}  # user name -> (when, id)
        self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="maildir")
        self._commits: GroupCommit[_Batch, dict[str, tuple[int, int]]] = GroupCommit(self._commit_deliveries)
        self._last_uidvalidity = 0

    # -- addresses --------------------------------------------------------------------

    def local_domains(self) -> list[str]:
        return list(self.addresses.domains)

    def is_local_domain(self, domain: str) -> bool:
        return self.addresses.is_local_domain(domain)

    async def resolve(self, address: str) -> str | None:
        return await self.addresses.resolve(address)

    async def owns_address(self, user: User, address: str) -> bool:
        return await self.addresses.owns(user, address)

    def address_of(self, user: User) -> str:
        return self.addresses.address_of(user)

    # -- folders ----------------------------------------------------------------------

    def _dir(self, user_name: str, folder: str) -> Path:
        return maildir.folder_dir(self.root / user_name, folder)

    def _uidvalidity(self) -> int:
        # Seconds since the epoch, as Dovecot does, but never twice in one process: a
        # folder deleted and made again must not look like the old one to a client.
        self._last_uidvalidity = max(int(time.time()), self._last_uidvalidity + 1)
        return self._last_uidvalidity

    async def _ensure(self, user_id: int, user_name: str) -> None:
        """The standard folders, in the database and on disk, made on first use."""
        if user_id in self._ready:
            return
        wanted = [INBOX, *SPECIAL_USE]
        for attempt in range(2):
            try:
                async with self.db.write() as conn:
                    have = set((await conn.execute(select(mail_folders.c.name).where(
                        mail_folders.c.user_id == user_id))).scalars())
                    for name in wanted:
                        if name not in have:
                            await conn.execute(insert(mail_folders).values(
                                user_id=user_id, name=name, uidvalidity=self._uidvalidity(),
                                uidnext=1, highestmodseq=1, subscribed=1,
                                special_use=SPECIAL_USE.get(name)))
                break
            except IntegrityError:
                if attempt:  # another node made them at the same moment: they exist now
                    raise
        await asyncio.to_thread(lambda: [maildir.ensure_folder(self._dir(user_name, name))
                                         for name in wanted])
        self._ready.add(user_id)

    @staticmethod
    def _folder(row: Any) -> Folder:
        return Folder(row.id, row.name, row.uidvalidity, row.uidnext, row.highestmodseq,
                      bool(row.subscribed), row.special_use)

    async def _folder_row(self, conn: AsyncConnection, user: User, name: str) -> Any:
        row = (await conn.execute(select(mail_folders).where(
            mail_folders.c.user_id == user.id, mail_folders.c.name == normalize_folder(name)))).first()
        if row is None:
            raise NotFound(f"no folder {name!r}")
        return row

    async def folders(self, user: User) -> list[Folder]:
        await self._ensure(user.id, user.name)
        async with self.db.read() as conn:
            rows = (await conn.execute(select(mail_folders).where(
                mail_folders.c.user_id == user.id).order_by(mail_folders.c.name))).all()
        return [self._folder(row) for row in rows]

    async def folder(self, user: User, name: str) -> Folder:
        await self._ensure(user.id, user.name)
        async with self.db.read() as conn:
            return self._folder(await self._folder_row(conn, user, name))

    async def create_folder(self, user: User, name: str) -> Folder:
        name = normalize_folder(name)
        await self._ensure(user.id, user.name)
        async with self.db.write() as conn:
            count = (await conn.execute(select(func.count()).select_from(mail_folders).where(
                mail_folders.c.user_id == user.id))).scalar_one()
            if count >= MAX_FOLDERS:
                raise Forbidden(f"at most {MAX_FOLDERS} folders per user")
            exists = (await conn.execute(select(mail_folders.c.id).where(
                mail_folders.c.user_id == user.id, mail_folders.c.name == name))).first()
            if exists:
                raise Conflict(f"folder {name!r} exists")
            # The Maildir++ directory first: a row without its directory would be a lie.
            await asyncio.to_thread(maildir.ensure_folder, self._dir(user.name, name))
            folder_id = (await conn.execute(insert(mail_folders).values(
                user_id=user.id, name=name, uidvalidity=self._uidvalidity(), uidnext=1,
                highestmodseq=1, subscribed=1).returning(mail_folders.c.id))).scalar_one()
            row = (await conn.execute(select(mail_folders).where(mail_folders.c.id == folder_id))).one()
        return self._folder(row)

    async def delete_folder(self, user: User, name: str) -> None:
        name = normalize_folder(name)
        if name == INBOX or name in SPECIAL_USE:
            raise Forbidden(f"{name} cannot be deleted")
        await self._ensure(user.id, user.name)
        async with self.db.write() as conn:
            row = await self._folder_row(conn, user, name)
            child = (await conn.execute(select(mail_folders.c.id).where(
                mail_folders.c.user_id == user.id,
                mail_folders.c.name.startswith(name + DELIMITER, autoescape=True)).limit(1))).first()
            if child:
                raise Conflict(f"{name} has subfolders; delete them first")
            await conn.execute(delete(mail_folders).where(mail_folders.c.id == row.id))
        await asyncio.to_thread(maildir.remove_tree, self._dir(user.name, name))
        self._usage.pop(user.id, None)
        self._notify(row.id)

    async def rename_folder(self, user: User, old: str, new: str) -> None:
        old, new = normalize_folder(old), normalize_folder(new)
        if old in SPECIAL_USE:
            raise Forbidden(f"{old} cannot be renamed")
        await self._ensure(user.id, user.name)
        if old == INBOX:
            # RFC 3501 6.3.5: renaming INBOX moves its messages to a new folder and
            # leaves INBOX, empty, in place.
            await self.create_folder(user, new)
            _, messages = await self.messages(user, INBOX)
            if messages:
                await self.move(user, INBOX, [m.uid for m in messages], new)
            return
        if new == INBOX:
            raise Conflict("INBOX exists")
        async with self.db.write() as conn:
            await self._folder_row(conn, user, old)
            if (await conn.execute(select(mail_folders.c.id).where(
                    mail_folders.c.user_id == user.id, mail_folders.c.name == new))).first():
                raise Conflict(f"folder {new!r} exists")
            rows = (await conn.execute(select(mail_folders.c.id, mail_folders.c.name).where(
                mail_folders.c.user_id == user.id,
                (mail_folders.c.name == old)
                | mail_folders.c.name.startswith(old + DELIMITER, autoescape=True)))).all()
            moves = [(row.id, row.name, new + row.name[len(old):]) for row in rows]
            for folder_id, _, target in moves:
                await conn.execute(update(mail_folders).where(mail_folders.c.id == folder_id)
                                   .values(name=target))
            # Directories inside the transaction: if one rename fails, nothing commits.
            await asyncio.to_thread(self._rename_dirs, user.name, moves)

    def _rename_dirs(self, user_name: str, moves: list[tuple[int, str, str]]) -> None:
        for _, source, target in moves:
            self._dir(user_name, source).rename(self._dir(user_name, target))

    async def subscribe(self, user: User, name: str, subscribed: bool) -> None:
        await self._ensure(user.id, user.name)
        async with self.db.write() as conn:
            row = await self._folder_row(conn, user, name)
            await conn.execute(update(mail_folders).where(mail_folders.c.id == row.id)
                               .values(subscribed=int(subscribed)))

    async def status(self, user: User, name: str) -> FolderStatus:
        folder = await self.folder(user, name)
        await self._scan(user, folder)
        async with self.db.read() as conn:
            folder = self._folder(await self._folder_row(conn, user, name))
            row = (await conn.execute(select(
                func.count(), func.coalesce(func.sum(mail_messages.c.size), 0),
                func.count().filter(~mail_messages.c.flags.contains("\\Seen", autoescape=True)))
                .where(mail_messages.c.folder_id == folder.id))).one()
        return FolderStatus(messages=row[0], unseen=row[2], uidnext=folder.uidnext,
                            uidvalidity=folder.uidvalidity,
                            highestmodseq=folder.highestmodseq, size=int(row[1]))

    async def usage(self, user: User) -> tuple[int, int]:
        self._usage.pop(user.id, None)
        return await self._usage_of(user.id), self.quota

    @staticmethod
    async def _used(conn: AsyncConnection, user_id: int) -> int:
        return int((await conn.execute(select(func.coalesce(func.sum(mail_messages.c.size), 0))
                                       .join(mail_folders, mail_folders.c.id == mail_messages.c.folder_id)
                                       .where(mail_folders.c.user_id == user_id))).scalar_one())

    async def can_receive(self, user_name: str, size: int) -> bool:
        """Whether a message of ``size`` bytes fits in this user's quota now (SMTP asks
        at RCPT time, so that a full mailbox is refused before the message is sent)."""
        user_id = (await self._user_ids([user_name])).get(user_name)
        if user_id is None:
            return False
        return await self._usage_of(user_id) + self._reserved.get(user_id, 0) + size <= self.quota

    # -- reading ----------------------------------------------------------------------

    async def messages(self, user: User, name: str) -> tuple[Folder, list[MessageMeta]]:
        folder = await self.folder(user, name)
        await self._scan(user, folder)
        async with self.db.read() as conn:
            folder = self._folder(await self._folder_row(conn, user, name))
            rows = (await conn.execute(select(
                mail_messages.c.uid, mail_messages.c.flags, mail_messages.c.internaldate,
                mail_messages.c.size, mail_messages.c.modseq, mail_messages.c.summary)
                .where(mail_messages.c.folder_id == folder.id).order_by(mail_messages.c.uid))).all()
        return folder, [_meta(row) for row in rows]

    async def _locate(self, user: User, name: str, uid: int) -> Path:
        async with self.db.read() as conn:
            folder = await self._folder_row(conn, user, name)
            row = (await conn.execute(select(mail_messages.c.name, mail_messages.c.filename).where(
                mail_messages.c.folder_id == folder.id, mail_messages.c.uid == uid))).first()
        if row is None:
            raise NotFound(f"no message {uid} in {name}")
        directory = self._dir(user.name, folder.name)
        path = directory / row.filename
        if not path.exists():
            # Another Maildir tool (or a flag change on another node) renamed it.
            found = await asyncio.to_thread(maildir.find, directory, row.name)
            if found is None:
                raise NotFound(f"message {uid} in {name} is gone")
            path = directory / found
        return path

    async def paths(self, user: User, name: str, uids: Iterable[int]) -> dict[int, Path]:
        """The files of many messages in one query (SEARCH BODY, FETCH of bodies); the
        ones that are gone are left out."""
        async with self.db.read() as conn:
            folder = await self._folder_row(conn, user, name)
            rows = await self._select(conn, folder.id, uids)
        directory = self._dir(user.name, folder.name)

        def locate() -> dict[int, Path]:
            found: dict[int, Path] = {}
            for row in rows:
                path = directory / row.filename
                if not path.exists():
                    moved = maildir.find(directory, row.name)
                    if moved is None:
                        continue
                    path = directory / moved
                found[row.uid] = path
            return found

        return await asyncio.to_thread(locate)

    async def meta(self, user: User, name: str, uid: int) -> MessageMeta:
        """One message's flags, dates, size and summary (NotFound if expunged)."""
        async with self.db.read() as conn:
            folder = await self._folder_row(conn, user, name)
            row = (await conn.execute(select(
                mail_messages.c.uid, mail_messages.c.flags, mail_messages.c.internaldate,
                mail_messages.c.size, mail_messages.c.modseq, mail_messages.c.summary).where(
                mail_messages.c.folder_id == folder.id, mail_messages.c.uid == uid))).first()
        if row is None:
            raise NotFound(f"no message {uid} in {name}")
        return _meta(row)

    async def open_message(self, user: User, name: str, uid: int) -> Path:
        return await self._locate(user, name, uid)

    async def read(self, user: User, name: str, uid: int) -> bytes:
        path = await self._locate(user, name, uid)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(f"message {uid} in {name} is gone") from None

    async def changes(self, user: User, name: str, since_modseq: int) -> Changes:
        async with self.db.read() as conn:
            folder = await self._folder_row(conn, user, name)
            rows = (await conn.execute(select(
                mail_messages.c.uid, mail_messages.c.flags, mail_messages.c.internaldate,
                mail_messages.c.size, mail_messages.c.modseq, mail_messages.c.summary)
                .where(mail_messages.c.folder_id == folder.id, mail_messages.c.modseq > since_modseq)
                .order_by(mail_messages.c.uid))).all()
            gone = (await conn.execute(select(mail_expunged.c.uid).where(
                mail_expunged.c.folder_id == folder.id, mail_expunged.c.modseq > since_modseq)
                .order_by(mail_expunged.c.uid))).scalars().all()
        return Changes(folder.highestmodseq, [_meta(row) for row in rows], list(gone))

    def watch(self, user: User, name: str) -> Watch:
        return Watch(self, user, name)

    def _notify(self, folder_id: int) -> None:
        for event in self._watchers.get(folder_id, ()):
            event.set()

    # -- writing ----------------------------------------------------------------------

    async def _bump(self, conn: AsyncConnection, folder_id: int, uids: int = 0) -> tuple[int, int]:
        """Take ``uids`` new UIDs and one new mod-sequence in a folder, atomically (the
        row is locked until commit): returns (first new uid, new modseq)."""
        row = (await conn.execute(update(mail_folders).where(mail_folders.c.id == folder_id).values(
            uidnext=mail_folders.c.uidnext + uids, highestmodseq=mail_folders.c.highestmodseq + 1)
            .returning(mail_folders.c.uidnext, mail_folders.c.highestmodseq))).one()
        await notify.publish(conn, folder_id)  # other nodes' sessions, if this commits
        return row.uidnext - uids, row.highestmodseq

    def _check_size(self, raw: bytes) -> None:
        if len(raw) > self.max_message:
            raise TooLarge(f"message larger than {self.max_message} bytes")

    async def append(self, user: User, name: str, raw: bytes, flags: Iterable[str] = (),
                     internaldate: datetime | None = None) -> tuple[int, int]:
        self._check_size(raw)
        folder = await self.folder(user, name)
        flags = frozenset(f for f in flags if f.lower() != "\\recent")
        summary = (await self._summarize(raw)).to_json()
        await self._reserve(user.id, user.name, len(raw))
        stored = False
        base = maildir.unique_name(len(raw))
        target = maildir.filename_for(base, flags, f"new/{base}")
        directory = self._dir(user.name, folder.name)
        self._pending.add(base)
        try:
            await asyncio.to_thread(maildir.write, directory, raw, base, target)
            self._begin_commit([user.id])
            try:
                async with self.db.write() as conn:
                    await self._check_committed_quota(conn, user, len(raw))
                    uid, modseq = await self._bump(conn, folder.id, 1)
                    await conn.execute(insert(mail_messages).values(
                        folder_id=folder.id, uid=uid, modseq=modseq, name=base, filename=target,
                        flags=_flag_text(flags), internaldate=internaldate or utcnow(),
                        size=len(raw), summary=summary))
                stored = True
            except BaseException:
                (directory / target).unlink(missing_ok=True)
                raise
            finally:
                self._end_commit([user.id])
        finally:
            self._pending.discard(base)
            self._release([user.id], len(raw), {user.id} if stored else set())
        self._notify(folder.id)
        return folder.uidvalidity, uid

    async def deliver(self, recipients: list[str], raw: bytes, *, folder: str = INBOX,
                      dedupe_key: str | None = None) -> list[Delivery]:
        """Deliver one message to several users: to all of them durably, or to none
        (an exception; files already written are removed). ``dedupe_key`` (default: the
        message's digest) makes a retry after a failure or a lost reply deliver no second
        copy to those who got the first within ``mail.dedupe_window``.

        The hot path of SMTP: in the steady state it reads nothing from the database
        (users and usage are cached) and shares one commit with concurrent deliveries."""
        self._check_size(raw)
        digest = dedupe_key or hashlib.sha256(raw).hexdigest()
        folder = normalize_folder(folder)
        names = list(dict.fromkeys(recipients))
        ids = await self._user_ids(names)
        missing = [name for name in names if name not in ids]
        if missing:
            raise NotFound(f"no mailbox for {', '.join(missing)}")
        claims: list[int] = []
        stored: set[int] = set()
        try:
            for name in names:
                await self._reserve(ids[name], name, len(raw))
                claims.append(ids[name])
                await self._ensure(ids[name], name)
            summary = (await self._summarize(raw)).to_json()
            bases = [maildir.unique_name(len(raw)) for _ in names]
            directories = [self._dir(name, folder) for name in names]
            self._pending.update(bases)
            loop = asyncio.get_running_loop()
            outcomes = await asyncio.gather(*(
                loop.run_in_executor(self._io, partial(maildir.write, directory, raw, base, f"new/{base}",
                                                       sync_dir=False))
                for directory, base in zip(directories, bases)), return_exceptions=True)
            failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            try:
                if failed:
                    raise failed[0]
                self._begin_commit(claims)
                try:
                    uids = await self._commits.submit(_Batch(folder, digest, len(raw), summary, [
                        (ids[name], name, base) for name, base in zip(names, bases)]))
                finally:
                    self._end_commit(claims)
            except asyncio.CancelledError:
                # The commit goes on without us (if it fails, a scan indexes the files):
                # whether it counts is unknown, so the usage is read again.
                for user_id in claims:
                    self._usage.pop(user_id, None)
                raise
            except BaseException:
                for directory, base in zip(directories, bases):
                    (directory / "new" / base).unlink(missing_ok=True)
                self._pending.difference_update(bases)
                raise
            for name, directory, base in zip(names, directories, bases):
                if name in uids:
                    stored.add(ids[name])
                else:  # delivered before: this copy was never committed
                    (directory / "new" / base).unlink(missing_ok=True)
        finally:
            self._release(claims, len(raw), stored)
        return [Delivery(name, folder, uids[name][1], False) if name in uids
                else Delivery(name, folder, 0, True) for name in names]

    @staticmethod
    async def _summarize(raw: bytes) -> Summary:
        # A small message is parsed in a fraction of a millisecond: cheaper here than
        # the hop to a thread and back. Not one with a large header: 10,000 addresses in
        # a To: field of 240 KB took 0.7 s to parse.
        small_header = raw.find(b"\n\r\n", 0, INLINE_HEADER) >= 0 or raw.find(b"\n\n", 0, INLINE_HEADER) >= 0
        if len(raw) <= INLINE_PARSE and small_header:
            return summarize(raw)
        return await asyncio.to_thread(summarize, raw)

    async def _user_ids(self, names: list[str]) -> dict[str, int]:
        now = time.monotonic()
        ids = {name: self._ids[name][1] for name in names
               if name in self._ids and now - self._ids[name][0] < USER_TTL}
        if len(ids) < len(names):
            async with self.db.read() as conn:
                for row in (await conn.execute(select(users.c.id, users.c.name).where(
                        users.c.name.in_([name for name in names if name not in ids])))).all():
                    ids[row.name] = row.id
                    self._ids[row.name] = (now, row.id)
        return ids

    async def _commit_deliveries(self, batches: list["_Batch"]) -> list[dict[str, tuple[int, int]] | Exception]:
        """One transaction for every delivery waiting (see group_commit.py). A recipient
        who got the same message (by digest) within the dedupe window is left out of
        its result; a delivery that would pass a recipient's quota (as committed by
        every node) gets QuotaExceeded instead."""
        now = utcnow()
        since = now - timedelta(seconds=self.dedupe_window)
        results: list[dict[str, tuple[int, int]]] = [{} for _ in batches]
        refused: set[int] = set()
        try:
            # The renames into new/ made durable, once per directory for the whole batch,
            # before the commit that lets anyone acknowledge them.
            directories = {self._dir(name, batch.folder) / "new" for batch in batches
                           for _, name, _ in batch.recipients}
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._io, maildir.fsync_dir, directory)
                                   for directory in directories))
            if self.db.dialect == "sqlite":
                counts = await self.db.sqlite_write(delivery_commit.commit_sqlite, batches, results, now, since)
            else:
                async with self.db.write() as conn:
                    refused = await self._over_quota(conn, batches, since)
                    kept = [n for n in range(len(batches)) if n not in refused]
                    counts = await self._commit_rows(conn, [batches[n] for n in kept],
                                                     [results[n] for n in kept], now, since)
        finally:
            self._pending.difference_update(base for batch in batches for _, _, base in batch.recipients)
        for folder_id in counts:
            self._notify(folder_id)
        return [QuotaExceeded("a recipient's mailbox is full") if n in refused else result
                for n, result in enumerate(results)]

    async def _quota_turn(self, conn: AsyncConnection, user_ids: Iterable[int]) -> dict[int, int]:
        """PostgreSQL: wait for these users' turn (QUOTA_LOCK, in id order, so two
        commits cannot deadlock) and return their committed usage."""
        ids = sorted(set(user_ids))
        for user_id in ids:
            await conn.execute(select(func.pg_advisory_xact_lock(QUOTA_LOCK, user_id)))
        rows = (await conn.execute(select(mail_folders.c.user_id, func.sum(mail_messages.c.size))
                                   .join(mail_folders, mail_folders.c.id == mail_messages.c.folder_id)
                                   .where(mail_folders.c.user_id.in_(ids))
                                   .group_by(mail_folders.c.user_id))).all()
        return {row[0]: int(row[1] or 0) for row in rows}

    async def _check_committed_quota(self, conn: AsyncConnection, user: User, size: int) -> None:
        if self.db.dialect == "sqlite":
            return  # one node, one writer: the claim in this process was the check
        if (await self._quota_turn(conn, [user.id])).get(user.id, 0) + size > self.quota:
            raise QuotaExceeded(f"{user.name}'s mailbox is full")

    async def _over_quota(self, conn: AsyncConnection, batches: list["_Batch"], since: datetime) -> set[int]:
        """The batches (by index) that would pass a recipient's quota as committed."""
        used = await self._quota_turn(conn, (user_id for batch in batches for user_id, _, _ in batch.recipients))
        done = {(row.user_id, row.digest) for row in (await conn.execute(select(
            mail_deliveries.c.user_id, mail_deliveries.c.digest).where(
            mail_deliveries.c.digest.in_({batch.digest for batch in batches}),
            mail_deliveries.c.delivered_at > since))).all()}
        refused: set[int] = set()
        for n, batch in enumerate(batches):
            fresh = {user_id for user_id, _, _ in batch.recipients if (user_id, batch.digest) not in done}
            if any(used.get(user_id, 0) + batch.size > self.quota for user_id in fresh):
                refused.add(n)
                continue
            for user_id in fresh:
                used[user_id] = used.get(user_id, 0) + batch.size
        return refused

    async def _commit_rows(self, conn: AsyncConnection, batches: list["_Batch"],
                           results: list[dict[str, tuple[int, int]]], now: datetime,
                           since: datetime) -> dict[int, int]:
        """delivery_commit.commit_sqlite through SQLAlchemy (PostgreSQL)."""
        user_ids, names, digests = delivery_commit.lookups(batches)
        folders = {(row.user_id, row.name): row.id for row in (await conn.execute(select(
            mail_folders.c.id, mail_folders.c.user_id, mail_folders.c.name).where(
            mail_folders.c.user_id.in_(user_ids), mail_folders.c.name.in_(names)))).all()}
        done = {(row.user_id, row.digest) for row in (await conn.execute(select(
            mail_deliveries.c.user_id, mail_deliveries.c.digest).where(
            mail_deliveries.c.digest.in_(digests), mail_deliveries.c.delivered_at > since))).all()}
        plan, counts = delivery_commit.plan_deliveries(batches, results, folders, done)
        if not plan:
            return counts
        first_uid: dict[int, int] = {}
        modseqs: dict[int, int] = {}
        for folder_id, count in counts.items():
            first_uid[folder_id], modseqs[folder_id] = await self._bump(conn, folder_id, count)
        messages, deliveries = delivery_commit.delivery_rows(plan, first_uid, modseqs, now)
        await conn.execute(insert(mail_messages), messages)
        # A record older than the window may still be there (with the same key).
        await conn.execute(delete(mail_deliveries).where(
            mail_deliveries.c.user_id == bindparam("u"), mail_deliveries.c.digest == bindparam("d")),
            [{"u": d["user_id"], "d": d["digest"]} for d in deliveries])
        await conn.execute(insert(mail_deliveries), deliveries)
        await conn.execute(delete(mail_deliveries).where(mail_deliveries.c.delivered_at < since))
        return counts

    # -- quota ------------------------------------------------------------------------

    async def _usage_of(self, user_id: int) -> int:
        """A user's mail usage, from a short-lived cache this process keeps current with
        its own writes (a SUM over the mailbox per delivery cost more than the delivery);
        other nodes' writes are seen within USAGE_TTL."""
        cached = self._usage.get(user_id)
        if cached is not None and time.monotonic() - cached[0] < USAGE_TTL:
            return cached[1]
        for attempt in range(3):
            epoch = self._epochs.get(user_id, 0)
            async with self.db.read() as conn:
                used = await self._used(conn, user_id)
            quiet = not self._committing.get(user_id) and self._epochs.get(user_id, 0) == epoch
            if quiet or attempt == 2:  # the last one is kept anyway: over by a message at most
                self._usage[user_id] = (time.monotonic(), used)
                break
        return used

    async def _reserve(self, user_id: int, user_name: str, size: int) -> None:
        """Claim ``size`` bytes of the user's quota for a write in flight, or raise
        QuotaExceeded. The check and the claim run with no await between them: one step
        for every writer of this process."""
        used = await self._usage_of(user_id)
        held = self._reserved.get(user_id, 0)
        if used + held + size > self.quota:
            raise QuotaExceeded(f"{user_name}'s mailbox is full")
        self._reserved[user_id] = held + size

    def _begin_commit(self, user_ids: list[int]) -> None:
        for user_id in user_ids:
            self._committing[user_id] = self._committing.get(user_id, 0) + 1
            self._epochs[user_id] = self._epochs.get(user_id, 0) + 1

    def _end_commit(self, user_ids: list[int]) -> None:
        for user_id in user_ids:
            left = self._committing.get(user_id, 0) - 1
            if left > 0:
                self._committing[user_id] = left
            else:
                self._committing.pop(user_id, None)

    def _release(self, user_ids: list[int], size: int, stored: set[int]) -> None:
        """Give back claims; the stored ones move to the usage in the same step."""
        for user_id in user_ids:
            left = self._reserved.get(user_id, 0) - size
            if left > 0:
                self._reserved[user_id] = left
            else:
                self._reserved.pop(user_id, None)
            if user_id in stored:
                self._count(user_id, size)

    def _count(self, user_id: int, delta: int) -> None:
        self._epochs[user_id] = self._epochs.get(user_id, 0) + 1
        cached = self._usage.get(user_id)
        if cached is not None:
            self._usage[user_id] = (cached[0], max(0, cached[1] + delta))

    async def _select(self, conn: AsyncConnection, folder_id: int, uids: Iterable[int]) -> list[Any]:
        rows: list[Any] = []
        for chunk in _chunks(sorted(set(uids))):
            rows += (await conn.execute(select(mail_messages).where(
                mail_messages.c.folder_id == folder_id, mail_messages.c.uid.in_(chunk)))).all()
        return sorted(rows, key=lambda row: row.uid)

    async def store_flags(self, user: User, name: str, uids: Iterable[int], flags: Iterable[str],
                          mode: str, unchanged_since: int | None = None) -> list[MessageMeta]:
        if mode not in ("set", "add", "remove"):
            raise InvalidInput(f"unknown flag mode {mode!r}")
        flags = {f for f in flags if f.lower() != "\\recent"}
        lowered = {f.lower() for f in flags}
        changed: list[MessageMeta] = []
        renames: list[tuple[str, str]] = []
        try:
            return await self._store_flags(user, name, uids, flags, lowered, mode, unchanged_since,
                                           changed, renames)
        finally:
            # Until its file is renamed, a scan would take the old name for a change made
            # by another Maildir tool and undo the new flags.
            self._pending.difference_update(maildir.base_name(new.split("/", 1)[1]) for _, new in renames)

    async def _store_flags(self, user: User, name: str, uids: Iterable[int], flags: set[str],
                           lowered: set[str], mode: str, unchanged_since: int | None,
                           changed: list[MessageMeta], renames: list[tuple[str, str]]) -> list[MessageMeta]:
        async with self.db.write() as conn:
            folder = await self._folder_row(conn, user, name)
            rows = await self._select(conn, folder.id, uids)
            updates = []
            for row in rows:
                if unchanged_since is not None and row.modseq > unchanged_since:
                    continue
                current = _flags(row.flags)
                if mode == "set":
                    result = frozenset(flags)
                elif mode == "add":
                    result = current | {f for f in flags if f.lower() not in {c.lower() for c in current}}
                else:
                    result = frozenset(f for f in current if f.lower() not in lowered)
                if result != current:
                    updates.append((row, result))
            if updates:
                _, modseq = await self._bump(conn, folder.id)
                for row, result in updates:
                    filename = maildir.filename_for(row.name, result, row.filename)
                    self._pending.add(row.name)
                    await conn.execute(update(mail_messages).where(mail_messages.c.id == row.id).values(
                        flags=_flag_text(result), modseq=modseq, filename=filename))
                    renames.append((row.filename, filename))
                    changed.append(MessageMeta(row.uid, result, row.internaldate, row.size, modseq, row.summary))
        if renames:
            # After the commit: the database is the truth for flags; the file name only
            # mirrors them for other Maildir tools, so a failed rename is not fatal.
            directory = self._dir(user.name, folder.name)
            await asyncio.to_thread(self._rename_files, directory, renames)
            self._notify(folder.id)
        return changed

    @staticmethod
    def _rename_files(directory: Path, renames: list[tuple[str, str]]) -> None:
        for old, new in renames:
            try:
                maildir.move_file(directory, old, new)
            except OSError as error:
                log.warning("could not rename %s to %s in %s: %s", old, new, directory, error)

    async def copy(self, user: User, name: str, uids: Iterable[int], dest: str, *,
                   _move: bool = False) -> tuple[int, list[tuple[int, int]]]:
        source = await self.folder(user, name)
        target = await self.folder(user, dest)
        source_dir, target_dir = self._dir(user.name, source.name), self._dir(user.name, target.name)
        async with self.db.read() as conn:
            rows = await self._select(conn, source.id, uids)
        if not rows:
            return target.uidvalidity, []
        # A move adds nothing to the usage; a copy claims what it adds.
        claim = 0 if _move else sum(row.size for row in rows)
        if claim:
            await self._reserve(user.id, user.name, claim)
        stored = False
        plan = []
        for row in rows:
            base = maildir.unique_name(row.size)
            plan.append((row, base, maildir.filename_for(base, _flags(row.flags), f"new/{base}")))
        self._pending.update(base for _, base, _ in plan)
        self._begin_commit([user.id])
        try:
            try:
                # In the try: files linked before one failed are removed with the rest.
                await asyncio.to_thread(self._link_all, source_dir, target_dir, plan)
                pairs = []
                async with self.db.write() as conn:
                    if claim:
                        await self._check_committed_quota(conn, user, claim)
                    first, modseq = await self._bump(conn, target.id, len(plan))
                    for offset, (row, base, filename) in enumerate(plan):
                        await conn.execute(insert(mail_messages).values(
                            folder_id=target.id, uid=first + offset, modseq=modseq, name=base,
                            filename=filename, flags=row.flags, internaldate=row.internaldate,
                            size=row.size, summary=row.summary))
                        pairs.append((row.uid, first + offset))
                    if _move:
                        await self._remove_rows(conn, source.id, rows)
                stored = True
            except BaseException:
                for _, _, filename in plan:
                    (target_dir / filename).unlink(missing_ok=True)
                raise
        finally:
            self._pending.difference_update(base for _, base, _ in plan)
            self._end_commit([user.id])
            self._release([user.id], claim, {user.id} if stored else set())
        if _move:
            await asyncio.to_thread(self._unlink_all, source_dir, rows)
            self._notify(source.id)
        self._notify(target.id)
        return target.uidvalidity, pairs

    def _link_all(self, source_dir: Path, target_dir: Path, plan: list[tuple[Any, str, str]]) -> None:
        for row, _, filename in plan:
            path = source_dir / row.filename
            if not path.exists():
                found = maildir.find(source_dir, row.name)
                if found is None:
                    raise NotFound(f"message {row.uid} is gone")
                path = source_dir / found
            maildir.link(path, target_dir, filename)

    async def move(self, user: User, name: str, uids: Iterable[int], dest: str) -> tuple[int, list[tuple[int, int]]]:
        if normalize_folder(name) == normalize_folder(dest):
            raise InvalidInput("source and destination are the same folder")
        return await self.copy(user, name, uids, dest, _move=True)

    async def _remove_rows(self, conn: AsyncConnection, folder_id: int, rows: list[Any]) -> None:
        _, modseq = await self._bump(conn, folder_id)
        for chunk in _chunks([row.id for row in rows]):
            await conn.execute(delete(mail_messages).where(mail_messages.c.id.in_(chunk)))
        await conn.execute(insert(mail_expunged), [
            {"folder_id": folder_id, "uid": row.uid, "modseq": modseq} for row in rows])

    @staticmethod
    def _unlink_all(directory: Path, rows: list[Any]) -> None:
        for row in rows:
            path = directory / row.filename
            if not path.exists():
                found = maildir.find(directory, row.name)
                if found is None:
                    continue
                path = directory / found
            path.unlink(missing_ok=True)

    async def expunge(self, user: User, name: str, uids: Iterable[int] | None = None) -> list[int]:
        async with self.db.write() as conn:
            folder = await self._folder_row(conn, user, name)
            if uids is None:
                candidates = (await conn.execute(select(mail_messages).where(
                    mail_messages.c.folder_id == folder.id,
                    mail_messages.c.flags.contains("\\Deleted", autoescape=True)))).all()
            else:
                candidates = await self._select(conn, folder.id, uids)
            rows = sorted((row for row in candidates if "\\Deleted" in _flags(row.flags)),
                          key=lambda row: row.uid)
            if rows:
                await self._remove_rows(conn, folder.id, rows)
        if rows:
            await asyncio.to_thread(self._unlink_all, self._dir(user.name, folder.name), rows)
            self._count(user.id, -sum(row.size for row in rows))
            self._notify(folder.id)
        return [row.uid for row in rows]

    # -- what other Maildir tools (or a crash) left on disk ---------------------------

    async def _scan(self, user: User, folder: Folder) -> None:
        """Index message files the database does not know (delivered by another tool,
        or written just before a crash) and forget rows whose file is gone. Cheap when
        nothing changed: two stat calls."""
        directory = self._dir(user.name, folder.name)
        stamp = maildir.stamp(directory)
        if self._stamps.get(folder.id) == stamp:
            return
        lock = self._scan_locks.setdefault(folder.id, asyncio.Lock())
        async with lock:
            stamp = maildir.stamp(directory)
            if self._stamps.get(folder.id) == stamp:
                return
            on_disk = await asyncio.to_thread(maildir.scan, directory)
            async with self.db.read() as conn:
                known = {row.name: row for row in (await conn.execute(select(
                    mail_messages.c.id, mail_messages.c.uid, mail_messages.c.name,
                    mail_messages.c.filename).where(mail_messages.c.folder_id == folder.id))).all()}
            new = [(base, filename) for base, filename in on_disk.items()
                   if base not in known and base not in self._pending]
            settled = await asyncio.to_thread(self._settled, directory, new)
            gone = [row for base, row in known.items() if base not in on_disk and base not in self._pending]
            moved = [(known[base], filename) for base, filename in on_disk.items()
                     if base in known and known[base].filename != filename and base not in self._pending]
            if settled or gone or moved:
                await self._reindex(directory, folder.id, settled, gone, moved)
                self._usage.pop(user.id, None)
            if len(settled) == len(new):  # else look again next time
                self._stamps[folder.id] = stamp
            await asyncio.to_thread(maildir.sweep_tmp, directory)

    @staticmethod
    def _settled(directory: Path, new: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The unknown files old enough not to be another node's delivery between its
        rename and its commit (that node indexes those itself)."""
        cutoff = time.time() - IN_FLIGHT_GRACE
        settled = []
        for base, filename in new:
            try:
                if os.stat(directory / filename).st_mtime <= cutoff:
                    settled.append((base, filename))
            except FileNotFoundError:
                pass
        return settled

    async def _reindex(self, directory: Path, folder_id: int, new: list[tuple[str, str]],
                       gone: list[Any], moved: list[tuple[Any, str]]) -> None:
        def load() -> list[tuple[str, str, bytes, float]]:
            loaded = []
            for base, filename in sorted(new):
                try:
                    path = directory / filename
                    loaded.append((base, filename, path.read_bytes(), path.stat().st_mtime))
                except FileNotFoundError:
                    continue
            return loaded

        loaded = await asyncio.to_thread(load)
        summaries = await asyncio.to_thread(lambda: [summarize(raw).to_json() for _, _, raw, _ in loaded])
        async with self.db.write() as conn:
            if gone:
                await self._remove_rows(conn, folder_id, gone)
            # In bulk: a mailbox copied in, or marked read by another tool, is thousands
            # of files, and a statement per file took a millisecond each.
            if moved:
                _, modseq = await self._bump(conn, folder_id)
                current: dict[int, str] = {}
                for chunk in _chunks([row.id for row, _ in moved]):
                    current.update((row.id, row.flags) for row in (await conn.execute(select(
                        mail_messages.c.id, mail_messages.c.flags).where(mail_messages.c.id.in_(chunk)))).all())
                changes = []
                for row, filename in moved:
                    # Another tool changed flags it can spell; keep our keywords.
                    kept = {f for f in _flags(current.get(row.id, "")) if f.lower() not in maildir.FLAG_LETTERS}
                    changes.append({"row_id": row.id, "filename": filename, "modseq": modseq,
                                    "flags": _flag_text(kept | maildir.flags_from_filename(filename))})
                await conn.execute(update(mail_messages).where(mail_messages.c.id == bindparam("row_id")), changes)
            if loaded:
                uid, modseq = await self._bump(conn, folder_id, len(loaded))
                rows = [{"folder_id": folder_id, "uid": uid + number, "modseq": modseq, "name": base,
                         "filename": filename, "flags": _flag_text(maildir.flags_from_filename(filename)),
                         "internaldate": datetime.fromtimestamp(mtime).astimezone(), "size": len(raw),
                         "summary": summary}
                        for number, ((base, filename, raw, mtime), summary) in enumerate(zip(loaded, summaries))]
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(mail_messages), rows)
                except IntegrityError:
                    # Another node indexed some of them first: the rest one by one (their
                    # UIDs were taken all the same; gaps are allowed, order is kept).
                    for row in rows:
                        try:
                            async with conn.begin_nested():
                                await conn.execute(insert(mail_messages), [row])
                        except IntegrityError:
                            pass
        self._notify(folder_id)

    def forget_user(self, user_name: str, user_id: int) -> None:
        self._ready.discard(user_id)
        self._ids.pop(user_name, None)
        self._usage.pop(user_id, None)
        self.addresses.forget()
        maildir.remove_tree(self.root / user_name)


def mail_store(runtime: Runtime) -> MailStore:
    return runtime.shared("mail.store", lambda: MailStore(runtime))


def forget_user_mail(runtime: Runtime):
    """The deletion hook: a deleted user's Maildirs go with the account."""

    async def forget(user: User) -> None:
        await asyncio.to_thread(mail_store(runtime).forget_user, user.name, user.id)

    return forget
