"""Work whose cost grows with what a user sent, run off the event loop and within a
deadline: parsing MIME for IMAP SEARCH BODY/TEXT and FETCH sections, and the like.

Its own pool, not the loop's default executor: that one does every session's short file
reads (message files, POP3 RETR), which must not queue behind a few users' searches
through 50 MB messages. Past the deadline the command is answered with an error
(:class:`TooSlow`); the thread cannot be stopped and finishes on its own, but the work
it does is bounded by what it was given (a message is at most mail.max_message).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from functools import partial
from typing import Any, Callable, TypeVar

from agora.core.errors import TooSlow

T = TypeVar("T")

_threads = 4     # heavy_work_threads
_timeout = 60.0  # heavy_work_timeout
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def configure(threads: int, timeout: float) -> None:
    """The pool's size (counts until it is made) and the deadline of each call."""
    global _threads, _timeout
    _threads, _timeout = threads, timeout


async def run(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a worker thread of the pool, within the deadline."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(_threads, thread_name_prefix="agora-heavy")
    future = asyncio.get_running_loop().run_in_executor(_pool, partial(function, *args))
    try:
        async with asyncio.timeout(_timeout or None):
            return await future
    except TimeoutError:
        raise TooSlow(f"this took longer than {_timeout:g} s (heavy_work_timeout); ask for less at once") from None
