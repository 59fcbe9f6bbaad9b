"""Exponential backoff after failed logins.

Failures are counted per client address and per (user, client address). Not per user
alone: then anyone could lock a user out by flooding wrong passwords from elsewhere. A
blocked attempt is refused before the password is hashed, so a flood costs no argon2.

An attempt is counted as a failure when it starts (:meth:`LoginLimiter.attempt`), before
the password is hashed, and given back if the password was right: counting only after the
hash let every guess sent in parallel through while the first ones were still hashing.
Attempts still being checked are *pending*: one that would start a backoff while others
are pending waits for their outcome (:meth:`LoginLimiter.must_wait`) rather than being
refused, so a client opening ten connections at once with the right password (a mail
client, a sync tool) is never locked out by its own logins, and guesses sent at once
still get no more checks than the free failures plus one.

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
    pending: int = 0  # attempts reserved and not yet decided


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

    def must_wait(self, name: str, address: str) -> bool:
        """True when one more attempt would pass the free failures while earlier ones are
        still pending: it should wait for their outcome (a right password gives its
        reservation back) before :meth:`attempt`, instead of starting a backoff."""
        for key, free in self._keys(name, address):
            entry = self._entries.get(key)
            if entry is not None and entry.pending > 0 and entry.failures >= free:
                return True
        return False

    def attempt(self, name: str, address: str) -> float:
        """Reserve one attempt for ``name`` from ``address``: 0 when allowed, and then it
        counts as a failure, pending until :meth:`succeeded`, :meth:`wrong` or
        :meth:`release` decides it; else the seconds to wait, and nothing is counted.
        Check and count happen in one step, so attempts made at once cannot all pass
        before the first of them has failed."""
        wait = self.retry_after(name, address)
        if wait <= 0:
            self.failed(name, address)
            for key, _free in self._keys(name, address):
                self._entries[key].pending += 1
        return wait

    def wrong(self, name: str, address: str) -> None:
        """A reserved attempt whose password was wrong: it stays counted as a failure."""
        for key, _free in self._keys(name, address):
            self._settle(key)

    def _settle(self, key: tuple[str, ...]) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pending > 0:
            entry.pending -= 1

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
                entry = _Entry(pending=entry.pending)
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
        # Its other pending attempts stay pending (and are decided on their own).
        pair = self._entries.pop(("user", name, address), None)
        if pair is not None and pair.pending > 1:
            self._entries[("user", name, address)] = _Entry(pending=pair.pending - 1)
        self._settle(("addr", address))
        self._give_back(("addr", address), self.free_failures_per_address)

    def release(self, name: str, address: str) -> None:
        """An attempt that checked no password after all (the request was malformed, or
        the server failed before the check): its reserved failure is given back."""
        for key, free in self._keys(name, address):
            self._settle(key)
            self._give_back(key, free)

    def _give_back(self, key: tuple[str, ...], free: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.failures > 0:
            entry.failures -= 1
            if entry.failures <= free:
                entry.blocked_until = 0.0
