"""The rows a group commit of deliveries writes (store.py's ``_commit_deliveries``), and
the whole commit on SQLite, run on the connection's own thread.

On SQLite the transaction is plain SQL inside ``db.sqlite_write()`` (BEGIN IMMEDIATE ...
COMMIT), one hop to that thread: through SQLAlchemy and aiosqlite each of its seven
statements was a hop there and back through an event loop busy with SMTP sessions, and
under load a commit took 13 ms of which the statements needed little; commits follow one
another, so that was the ceiling of durable deliveries per second. PostgreSQL goes
through SQLAlchemy (store.py), from the same plan and rows. Timestamps are stored as
SQLAlchemy stores them on SQLite, so both paths read each other's rows.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agora.core.errors import NotFound
from agora.core.tables import sqlite_time

if TYPE_CHECKING:
    from agora.mail.store import _Batch

Results = list[dict[str, tuple[int, int]]]  # per batch: user name -> (folder id, uid)
Plan = list[tuple["_Batch", dict[str, tuple[int, int]], int, str, str, int]]


def lookups(batches: list["_Batch"]) -> tuple[set[int], set[str], set[str]]:
    """What a commit reads before it plans: the recipients' user ids and folder names
    (their folders' ids), and the messages' digests (deliveries within the window)."""
    return ({user_id for batch in batches for user_id, _, _ in batch.recipients},
            {batch.folder for batch in batches}, {batch.digest for batch in batches})


def plan_deliveries(batches: list["_Batch"], results: Results, folders: dict[tuple[int, str], int],
                    done: set[tuple[int, str]]) -> tuple[Plan, dict[int, int]]:
    """Who gets what: (batch, its result, user id, user name, base name, folder id) for
    each recipient who did not get the same message (``done``: (user id, digest)) within
    the dedupe window, and how many new messages each folder gets."""
    plan: Plan = []
    counts: dict[int, int] = {}
    for batch, result in zip(batches, results):
        for user_id, user_name, base in batch.recipients:
            if (user_id, batch.digest) in done:
                continue
            done.add((user_id, batch.digest))  # the same message twice in one batch
            folder_id = folders.get((user_id, batch.folder))
            if folder_id is None:
                raise NotFound(f"{user_name} has no folder {batch.folder!r}")
            counts[folder_id] = counts.get(folder_id, 0) + 1
            plan.append((batch, result, user_id, user_name, base, folder_id))
    return plan, counts


def delivery_rows(plan: Plan, first_uid: dict[int, int], modseqs: dict[int, int],
                  now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The mail_messages and mail_deliveries rows of a plan, UIDs given in order from
    each folder's ``first_uid``; fills in each batch's result."""
    next_uid = dict(first_uid)
    messages, deliveries = [], []
    for batch, result, user_id, user_name, base, folder_id in plan:
        uid = next_uid[folder_id]
        next_uid[folder_id] += 1
        messages.append({"folder_id": folder_id, "uid": uid, "modseq": modseqs[folder_id], "name": base,
                         "filename": f"new/{base}", "flags": "", "internaldate": now, "size": batch.size,
                         "summary": batch.summary})
        deliveries.append({"user_id": user_id, "digest": batch.digest, "delivered_at": now})
        result[user_name] = (folder_id, uid)
    return messages, deliveries


def _marks(values: Any) -> str:
    return ", ".join("?" * len(values))


def commit_sqlite(db: sqlite3.Connection, batches: list["_Batch"], results: Results, now: datetime,
                  since: datetime) -> dict[int, int]:
    """The commit's reads and writes, in the transaction ``sqlite_write`` opened; returns
    the new messages per folder (the folders to notify)."""
    user_ids, names, digests = map(list, lookups(batches))
    folders = {(user_id, name): folder_id for folder_id, user_id, name in db.execute(
        f"SELECT id, user_id, name FROM mail_folders WHERE user_id IN ({_marks(user_ids)}) "
        f"AND name IN ({_marks(names)})", [*user_ids, *names])}
    done = set(db.execute(f"SELECT user_id, digest FROM mail_deliveries WHERE digest IN ({_marks(digests)}) "
                          "AND delivered_at > ?", [*digests, sqlite_time(since)]))
    plan, counts = plan_deliveries(batches, results, folders, done)
    if not plan:
        return counts
    first_uid, modseqs = {}, {}
    for folder_id, count in counts.items():
        uidnext, modseq = db.execute(
            "UPDATE mail_folders SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 WHERE id = ? "
            "RETURNING uidnext, highestmodseq", (count, folder_id)).fetchone()
        first_uid[folder_id], modseqs[folder_id] = uidnext - count, modseq
    messages, deliveries = delivery_rows(plan, first_uid, modseqs, now)
    stamp = sqlite_time(now)
    db.executemany("INSERT INTO mail_messages (folder_id, uid, modseq, name, filename, flags, internaldate, "
                   "size, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [(m["folder_id"], m["uid"], m["modseq"], m["name"], m["filename"], m["flags"], stamp,
                     m["size"], m["summary"]) for m in messages])
    # A record older than the window may still be there (with the same key).
    keys = [(d["user_id"], d["digest"]) for d in deliveries]
    db.executemany("DELETE FROM mail_deliveries WHERE user_id = ? AND digest = ?", keys)
    db.executemany("INSERT INTO mail_deliveries (user_id, digest, delivered_at) VALUES (?, ?, ?)",
                   [(user_id, digest, stamp) for user_id, digest in keys])
    db.execute("DELETE FROM mail_deliveries WHERE delivered_at < ?", (sqlite_time(since),))
    return counts
