"""Exponential backoff after failed logins.

Failures are counted per client address and per (user, client address). Not per user
alone: then anyone could lock a user out by flooding wrong passwords from elsewhere. A
blocked attempt is refused before the password is hashed, so a flood costs no argon2.

An attempt is counted as a failure when it starts (:meth:`LoginLimiter.attempt`), before
the password is hashed, and given back if the password was right: counting only after the
hash let every guess sent in parallel through while the first ones were still hashing.

State is in memory, per process: a restart forgets it, and each node of a scale-out
counts for itself (an attacker's budget grows with the node count, not without bound).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

# Entries kept at most; the least recently touched go first, so memory stays bounded
# whatever addresses and names an attacker makes up.
MAX_ENTRIES = 100_000


@dataclass
class _Entry:
    failures: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0
    reported_block: float = 0.0


class LoginLimiter:
    def __init__(self, *, free_failures: int = 5, free_failures_per_address: int = 20,
                 base: float = 1.0, maximum: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.free_failures = free_failures
        self.free_failures_per_address = free_failures_per_address
        self.base = base
        self.maximum = maximum
        self.clock = clock
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()

    def _keys(self, name: str, address: str) -> list[tuple[tuple[str, ...], int]]:
        return [(("addr", address), self.free_failures_per_address),
                (("user", name, address), self.free_failures)]

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until an attempt for ``name`` from ``address`` is allowed (0: now)."""
        now = self.clock()
        wait = 0.0
        for key, _free in self._keys(name, address):
            entry = self._entries.get(key)
            if entry is not None:
                wait = max(wait, entry.blocked_until - now)
        return wait

    def attempt(self, name: str, address: str) -> float:
        """Reserve one attempt for ``name`` from ``address``: 0 when allowed, and then it
        counts as a failure until :meth:`succeeded` gives it back; else the seconds to
        wait, and nothing is counted. Check and count happen in one step, so attempts
        made at once cannot all pass before the first of them has failed."""
        wait = self.retry_after(name, address)
        if wait <= 0:
            self.failed(name, address)
        return wait

    def first_refusal(self, name: str, address: str) -> bool:
        """True once per backoff step while blocked: a flood is recorded (audited) once
        per step, not once per try, so it cannot fill the audit log."""
        now = self.clock()
        for key, _free in self._keys(name, address):
            entry = self._entries.get(key)
            if entry is not None and entry.blocked_until > now and entry.reported_block != entry.blocked_until:
                entry.reported_block = entry.blocked_until
                return True
        return False

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        for key, free in self._keys(name, address):
            entry = self._entries.pop(key, None) or _Entry()
            # A quiet period as long as the longest backoff forgives old failures.
            if now - entry.last_failure > self.maximum:
                entry = _Entry()
            entry.failures += 1
            entry.last_failure = now
            excess = entry.failures - free
            if excess > 0:
                delay = min(self.maximum, self.base * 2 ** min(excess - 1, 40))
                entry.blocked_until = now + delay
            self._entries[key] = entry
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def succeeded(self, name: str, address: str) -> None:
        """A right password after :meth:`attempt`: the pair is forgiven, and the address
        gets back the one failure the attempt reserved."""
        # Only the (user, address) pair is forgiven: one good login from a shared
        # address must not wipe the record of a flood against other names from it.
        self._entries.pop(("user", name, address), None)
        self._give_back(("addr", address), self.free_failures_per_address)

    def release(self, name: str, address: str) -> None:
        """An attempt that checked no password after all (the request was malformed, or
        the server failed before the check): its reserved failure is given back."""
        for key, free in self._keys(name, address):
            self._give_back(key, free)

    def _give_back(self, key: tuple[str, ...], free: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.failures > 0:
            entry.failures -= 1
            if entry.failures <= free:
                entry.blocked_until = 0.0
