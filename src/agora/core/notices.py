"""One connection LISTENing on a PostgreSQL channel for as long as the server runs.

Where several nodes share one PostgreSQL, a change committed on one must reach the
others at once (an IMAP IDLE woken, an account's sessions ended): the transaction that
makes it runs ``pg_notify`` (delivered only if it commits), and each node listens.
The connection is made again after any loss (a restart, a failover, the network).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from agora.core.database import Database

RECONNECT_DELAY = 2.0  # after the listening connection drops


async def listen(db: Database, channel: str, heard: Callable[[str], None], connected: asyncio.Event,
                 log: logging.Logger, *, on_connect: Callable[[], None] | None = None) -> None:
    """Call ``heard(payload)`` for each notice on ``channel``, forever. ``connected`` is
    set once the first LISTEN is in place (or has failed: the caller need not wait on a
    database that is down); ``on_connect`` runs after each (re)connection, for what
    may have changed while nobody listened."""
    import asyncpg

    dsn = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
    while True:
        try:
            conn = await asyncpg.connect(dsn)
            try:
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: heard(payload))
                connected.set()
                if on_connect is not None:
                    on_connect()
                await lost.wait()
            finally:
                await conn.close(timeout=2)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the database restarts, the network drops...
            connected.set()
            log.warning("%s notices: %s; reconnecting in %.0f s", channel, error, RECONNECT_DELAY)
        await asyncio.sleep(RECONNECT_DELAY)
