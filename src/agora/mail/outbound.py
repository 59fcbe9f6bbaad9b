"""The outbound queue: mail for other domains, delivered by SMTP with retries.

A message is a file ``DATA_DIR/mail-queue/<id>.eml`` (written and fsynced first) and a
``mail_queue`` row (committed second) holding its envelope and the recipients still to
do; ``enqueue`` returns after both, so a queued message survives a crash. A worker takes
due rows (a claim with an expiry, so several nodes share one queue and a crashed node's
work is picked up again), finds each domain's next hop (``mail.routes``, else MX, else
the domain's address record: RFC 5321 5.1), and talks SMTP to it (``outbound_smtp``).
Per recipient: 2xx done, 5xx bounced at once, 4xx or no answer retried after
``mail.retry_base`` doubling up to ``mail.retry_max``, bounced after ``mail.bounce_after``.
A bounce is a delivery status notification (RFC 3464) to the envelope sender, from the
null sender, and is never bounced itself. The row and file go when every recipient is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, or_, select, update

from agora.core.errors import NotFound
from agora.core.fsutil import write_atomically
from agora.core.runtime import Runtime
from agora.core.tables import utcnow
from agora.mail.addresses import split
from agora.mail.outbound_smtp import Result, deliver_to_domain, dsn
from agora.mail.tables import mail_queue

log = logging.getLogger("agora.mail")

BATCH = 32  # rows claimed at once
PARALLEL = 16  # messages being delivered at once per node
POLL = 30.0  # look for due rows at least this often (another node's, expired claims)
ORPHAN_AGE = 3600.0  # a queue file without a row this old was never committed
LOGGED_RECIPIENTS = 10  # recipients named in the log line of one answer (the rest counted)


class OutboundQueue:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        config = runtime.config.mail
        self.config = config
        self.db = runtime.db
        self.root = runtime.data_dir / "mail-queue"
        self.root.mkdir(mode=0o700, exist_ok=True)
        # Renewed while the work goes on, so it need only outlast a crashed node's
        # silence before another node (or this one restarted) takes the message up.
        self.claim_for = max(30.0, 2 * config.outbound_timeout)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.working: dict[str, asyncio.Task[None]] = {}
        self.slots = asyncio.Semaphore(PARALLEL)
        self._hostname = config.hostname

    def path(self, queue_id: str) -> Path:
        return self.root / f"{queue_id}.eml"

    # -- enqueue ------------------------------------------------------------------------

    async def enqueue(self, sender: str, recipients: list[str], raw: bytes, *,
                      dedupe_key: str | None = None) -> str:
        """Queue ``raw`` for ``recipients`` (remote addresses); durable when it returns.

        With ``dedupe_key`` (what SMTP submission computes), the same message queued
        again while the first is still waiting is not queued twice."""
        if not recipients:
            raise ValueError("no recipients")
        queue_id = dedupe_key[:32] if dedupe_key else secrets.token_hex(16)
        if dedupe_key:
            async with self.db.read() as conn:
                if (await conn.execute(select(mail_queue.c.id).where(mail_queue.c.id == queue_id))).first():
                    return queue_id
        path = self.path(queue_id)
        await asyncio.to_thread(write_atomically, path, raw, 0o600)
        now = utcnow()
        try:
            async with self.db.write() as conn:
                await conn.execute(insert(mail_queue).values(
                    id=queue_id, sender=sender, recipients=json.dumps(list(dict.fromkeys(recipients))),
                    created_at=now, next_attempt_at=now, attempts=0))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.info("outbound %s queued: <%s> -> %s, %d bytes", queue_id, sender,
                 ", ".join(recipients), len(raw))
        self.wake.set()
        return queue_id

    # -- the worker ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.task is None:
            if not self._hostname:
                import socket
                self._hostname = await asyncio.to_thread(socket.getfqdn)
            self.task = asyncio.create_task(self._run(), name="mail-outbound")

    async def stop(self, timeout: float = 0.0) -> None:
        if self.task is None:
            return
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.task = None
        if self.working:
            await asyncio.wait(list(self.working.values()), timeout=timeout)
        # What is not finished by now goes back to the queue at once (for another node,
        # or this one after a restart) instead of waiting for its claim to expire.
        ids = list(self.working)
        for task in list(self.working.values()):
            task.cancel()
        await asyncio.gather(*self.working.values(), return_exceptions=True)
        if ids:
            try:
                async with self.db.write() as conn:
                    await conn.execute(update(mail_queue).where(mail_queue.c.id.in_(ids))
                                       .values(claimed_until=None))
            except Exception as error:  # the database is going away too
                log.warning("outbound: could not release %d claims: %s", len(ids), error)

    async def _sweep_orphans(self) -> None:
        """The file is written before its row: a crash in between leaves a file alone,
        never acknowledged to anyone. Removed once old enough not to be in flight."""
        def old_files() -> dict[str, Path]:
            cutoff = time.time() - ORPHAN_AGE
            found = {}
            for path in self.root.glob("*.eml"):
                try:
                    if path.stat().st_mtime < cutoff:
                        found[path.stem] = path
                except FileNotFoundError:
                    pass
            return found

        files = await asyncio.to_thread(old_files)
        if not files:
            return
        async with self.db.read() as conn:
            known = set((await conn.execute(select(mail_queue.c.id).where(
                mail_queue.c.id.in_(list(files)[:500])))).scalars())
        for queue_id in list(files)[:500]:
            if queue_id not in known:
                log.warning("outbound: removing %s, queued but never committed", files[queue_id].name)
                files[queue_id].unlink(missing_ok=True)

    async def _run(self) -> None:
        try:
            await self._sweep_orphans()
        except Exception as error:
            log.warning("outbound: sweeping the queue directory: %s", error)
        while True:
            self.wake.clear()
            try:
                rows = await self._claim()
                for row in rows:
                    await self.slots.acquire()
                    task = asyncio.create_task(self._work(row), name=f"mail-outbound-{row.id}")
                    self.working[row.id] = task
                    task.add_done_callback(lambda _t, queue_id=row.id: self._done(queue_id))
                if len(rows) == BATCH:
                    continue
                wait = await self._next_due()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error("outbound: %s", error, exc_info=error)
                wait = 5.0
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.05, min(wait, POLL)))
            except asyncio.TimeoutError:
                pass

    def _done(self, queue_id: str) -> None:
        self.working.pop(queue_id, None)
        self.slots.release()

    async def _claim(self) -> list[Any]:
        now = utcnow()
        free = or_(mail_queue.c.claimed_until.is_(None), mail_queue.c.claimed_until < now)
        async with self.db.read() as conn:
            candidates = (await conn.execute(select(mail_queue).where(
                mail_queue.c.next_attempt_at <= now, free)
                .order_by(mail_queue.c.next_attempt_at).limit(BATCH))).all()
        claimed = []
        until = now + timedelta(seconds=self.claim_for)
        for row in candidates:
            if row.id in self.working:
                continue
            async with self.db.write() as conn:
                # Whoever changes the row first owns it; the others see rowcount 0.
                taken = (await conn.execute(update(mail_queue).where(mail_queue.c.id == row.id, free)
                                            .values(claimed_until=until))).rowcount
            if taken:
                claimed.append(row)
        return claimed

    async def _next_due(self) -> float:
        async with self.db.read() as conn:
            first = (await conn.execute(select(mail_queue.c.next_attempt_at).where(
                mail_queue.c.claimed_until.is_(None)).order_by(mail_queue.c.next_attempt_at)
                .limit(1))).scalar()
        if first is None:
            return POLL
        return (first - utcnow()).total_seconds()

    async def _renew(self, queue_id: str) -> None:
        while True:
            await asyncio.sleep(self.claim_for / 3)
            async with self.db.write() as conn:
                await conn.execute(update(mail_queue).where(mail_queue.c.id == queue_id).values(
                    claimed_until=utcnow() + timedelta(seconds=self.claim_for)))

    async def _work(self, row: Any) -> None:
        renew = asyncio.create_task(self._renew(row.id))
        try:
            await self._attempt(row)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("outbound %s: attempt failed: %s", row.id, error, exc_info=error)
            await self._reschedule(row, json.loads(row.recipients), f"internal error: {error}")
        finally:
            renew.cancel()

    async def _attempt(self, row: Any) -> None:
        recipients: list[str] = json.loads(row.recipients)
        try:
            raw = await asyncio.to_thread(self.path(row.id).read_bytes)
        except FileNotFoundError:
            log.error("outbound %s: message file is missing; dropping it", row.id)
            await self._finish(row.id)
            return
        by_domain: dict[str, list[str]] = {}
        for address in recipients:
            try:
                by_domain.setdefault(split(address)[1], []).append(address)
            except Exception:
                by_domain.setdefault("", []).append(address)
        results: dict[str, Result] = {}
        for found in await asyncio.gather(*(
                self._to_domain(row, domain, addresses, raw) for domain, addresses in by_domain.items())):
            results.update(found)
        failed = {a: r for a, r in results.items() if r.permanent}
        waiting = [a for a in recipients if a in results and results[a].temporary]
        expired = (utcnow() - row.created_at).total_seconds() >= self.config.bounce_after
        if expired and waiting:
            failed.update({a: results[a] for a in waiting})
            waiting = []
        if failed:
            try:
                await self._bounce(row, raw, failed, expired)
            except Exception as error:
                # Not told yet: those recipients stay queued, and are tried (and
                # bounced) again, without the ones done now getting a second copy.
                log.error("outbound %s: bouncing to <%s> failed: %s", row.id, row.sender, error)
                waiting += [a for a in recipients if a in failed and a not in waiting]
        if waiting:
            last = "; ".join(f"{a}: {results[a].text}" for a in waiting)[:2000]
            await self._reschedule(row, waiting, last)
        else:
            await self._finish(row.id)

    async def _to_domain(self, row: Any, domain: str, addresses: list[str],
                         raw: bytes) -> dict[str, Result]:
        if not domain:
            return {a: Result(553, "5.1.3 bad recipient address") for a in addresses}
        results = await deliver_to_domain(domain, row.sender, addresses, raw, routes=self.config.routes,
                                          helo=self._hostname, timeout=self.config.outbound_timeout)
        # One line per answer, not per recipient: 10,000 recipients refused alike were
        # 10,000 lines written from the event loop (1.7 s).
        answers: dict[tuple[int, str], list[str]] = {}
        for address, result in results.items():
            answers.setdefault((result.code, result.text), []).append(address)
        for (code, text), alike in answers.items():
            more = f" and {len(alike) - LOGGED_RECIPIENTS} more" if len(alike) > LOGGED_RECIPIENTS else ""
            log.info("outbound %s attempt %d: <%s> -> %s%s: %s %s", row.id, row.attempts + 1, row.sender,
                     ", ".join(f"<{a}>" for a in alike[:LOGGED_RECIPIENTS]), more, code, text)
        return results

    async def _reschedule(self, row: Any, waiting: list[str], error: str) -> None:
        delay = min(self.config.retry_base * 2 ** row.attempts, self.config.retry_max)
        async with self.db.write() as conn:
            await conn.execute(update(mail_queue).where(mail_queue.c.id == row.id).values(
                recipients=json.dumps(waiting), attempts=row.attempts + 1, last_error=error,
                next_attempt_at=utcnow() + timedelta(seconds=delay), claimed_until=None))
        log.info("outbound %s: %d recipient(s) deferred, next attempt in %.1f s", row.id,
                 len(waiting), delay)
        self.wake.set()  # the worker recomputes when to look again

    async def _finish(self, queue_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(mail_queue).where(mail_queue.c.id == queue_id))
        await asyncio.to_thread(self.path(queue_id).unlink, missing_ok=True)

    async def _bounce(self, row: Any, raw: bytes, failed: dict[str, Result], expired: bool) -> None:
        """Tell the sender; durable before the recipients are taken off the row."""
        if not row.sender:
            log.warning("outbound %s: a bounce could not be delivered to %s; dropped", row.id,
                        ", ".join(failed))
            return
        report = dsn(self._hostname, row.sender, row.created_at, raw, failed, expired)
        from agora.mail.store import QuotaExceeded, mail_store

        store = mail_store(self.runtime)
        _, domain = split(row.sender)
        if store.is_local_domain(domain):
            name = await store.resolve(row.sender)
            if name is None:
                log.warning("outbound %s: bounce for unknown local sender <%s> dropped", row.id, row.sender)
                return
            try:
                await store.deliver([name], report, dedupe_key=f"bounce:{row.id}:{row.attempts}")
            except (QuotaExceeded, NotFound) as error:
                log.warning("outbound %s: bounce to <%s> dropped: %s", row.id, row.sender, error)
                return
        else:
            await self.enqueue("", [row.sender], report)
        log.info("outbound %s: bounced %s to <%s>", row.id, ", ".join(failed), row.sender)


def outbound_queue(runtime: Runtime) -> OutboundQueue:
    return runtime.shared("mail.outbound", lambda: OutboundQueue(runtime))
