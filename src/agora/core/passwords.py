"""argon2id password hashing, off the event loop and bounded in concurrency.

A hash costs tens of milliseconds of CPU and 64 MiB by default; running them in threads
keeps the loop answering, and the semaphore keeps a login flood from taking every core.
"""

from __future__ import annotations

import asyncio
import secrets

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_PASSWORD_LENGTH = 1024
MIN_PASSWORD_LENGTH = 8


class PasswordHasher:
    def __init__(self, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4,
                 max_concurrent: int = 2):
        self._hasher = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                             parallelism=parallelism, type=argon2.Type.ID)
        self._max_concurrent = max_concurrent
        self._semaphore: asyncio.Semaphore | None = None
        self._dummy: str | None = None

    @property
    def _dummy_hash(self) -> str:
        # Verified when the user does not exist, so that "no such user" takes as long
        # as "wrong password" and timing does not reveal which names exist. Made on
        # first use: commands that never check a password do not pay for it.
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_hex(16))
        return self._dummy

    def _slots(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._max_concurrent)
        return self._semaphore

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify_sync(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._dummy_hash, password) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    async def hash(self, password: str) -> str:
        async with self._slots():
            return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        async with self._slots():
            return await asyncio.to_thread(self.verify_sync, stored_hash, password)


def generate_password() -> str:
    """A password for generated accounts: 20 characters from an unambiguous alphabet."""
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))
