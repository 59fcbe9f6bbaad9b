"""One writer batch on SQLite, run synchronously on the connection's own thread.

The same reads and writes as ``Writer._apply`` (SQLAlchemy, used on PostgreSQL) in plain
SQL on the sqlite3 connection, inside the transaction ``db.sqlite_write()`` opened
(BEGIN IMMEDIATE) and will commit. Timestamps are stored as SQLAlchemy stores them on SQLite
(naive UTC text with microseconds), so both paths read each other's rows.
"""

from __future__ import annotations

import sqlite3
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Iterable

from agora.bank.transfers import TRANSFER_COLUMNS
from agora.core.tables import from_sqlite_time, sqlite_time, utcnow

if TYPE_CHECKING:
    from agora.bank.writer import Move, Resolve, Writer

CHUNK = 500  # values per IN (...): well under SQLite's limit of bound parameters
# Every row of a batch has the batch's time (``batch.now``): it is formatted once and
# goes last; the other values are picked from a row in one call.
_INSERTED = tuple(c for c in TRANSFER_COLUMNS if c != "created_at")
_VALUES = itemgetter(*_INSERTED)
SELECT_TRANSFERS = (
    "SELECT t.seq, " + ", ".join(f"t.{c}" for c in TRANSFER_COLUMNS) + ", d.number, c.number "
    "FROM bank_transfers t JOIN bank_accounts d ON d.id = t.debit_id JOIN bank_accounts c ON c.id = t.credit_id "
    "WHERE t.id IN ({})")
SELECT_ACCOUNTS = ("SELECT id, number, user_id, currency, flags, posted, pending_debits, pending_credits, "
                   "closed_at FROM bank_accounts WHERE {} IN ({})")
INSERT_TRANSFER = (f"INSERT INTO bank_transfers ({', '.join(_INSERTED)}, created_at) "
                   f"VALUES ({', '.join('?' * (len(_INSERTED) + 1))})")
UPDATE_ACCOUNT = "UPDATE bank_accounts SET posted = ?, pending_debits = ?, pending_credits = ? WHERE id = ?"


def _chunks(values: Iterable[Any]) -> Iterable[list[Any]]:
    values = list(values)
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def _transfers(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for chunk in _chunks(ids):
        for row in db.execute(SELECT_TRANSFERS.format(", ".join("?" * len(chunk))), chunk):
            item = dict(zip(("seq", *TRANSFER_COLUMNS, "debit", "credit"), row))
            item["created_at"] = from_sqlite_time(item["created_at"])
            found[item["id"]] = item
    return found


def apply(db: sqlite3.Connection, writer: "Writer", ops: list["Move | Resolve"]) -> list[Any]:
    from agora.bank.writer import Account, Batch, Move, resolution_id

    numbers = {n for op in ops if isinstance(op, Move) for s in op.specs for n in (s.debit, s.credit)}
    pending_ids = {op.pending_id for op in ops if not isinstance(op, Move)}
    pendings = _transfers(db, pending_ids) if pending_ids else {}
    accounts: dict[str, Account] = {}
    account_ids = {r[k] for r in pendings.values() for k in ("debit_id", "credit_id")}
    for column, keys in (("number", numbers), ("id", account_ids)):
        for chunk in _chunks(keys):
            for row in db.execute(SELECT_ACCOUNTS.format(column, ", ".join("?" * len(chunk))), chunk):
                accounts[row[1]] = Account(*row[:8], closed=row[8] is not None)
    ids = {s.id for op in ops if isinstance(op, Move) for s in op.specs} | {resolution_id(p) for p in pending_ids}
    batch = Batch(now=utcnow(), accounts=accounts, known=_transfers(db, ids), pendings=pendings)
    results = writer.run(batch, ops)
    if batch.transfers:
        now = (sqlite_time(batch.now),)
        db.executemany(INSERT_TRANSFER, [_VALUES(t) + now for t in batch.transfers])
    if batch.dirty:
        db.executemany(UPDATE_ACCOUNT, [(a.posted, a.pending_debits, a.pending_credits, a.id)
                                        for a in (batch.accounts[n] for n in batch.dirty)])
    if batch.holds_added:
        db.executemany("INSERT INTO bank_holds (transfer_id, expires_at) VALUES (?, ?)", [
            (h["transfer_id"], sqlite_time(h["expires_at"]))
            for h in batch.holds_added])
    if batch.holds_removed:
        db.executemany("DELETE FROM bank_holds WHERE transfer_id = ?", [(i,) for i in batch.holds_removed])
    return results
