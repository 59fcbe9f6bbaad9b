"""How adapters get the files domain: one FileStore per process, one view per user."""

from __future__ import annotations

import asyncio

from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.files.store import FileStore, UserFiles


def file_store(runtime: Runtime) -> FileStore:
    return runtime.shared("files.store", lambda: FileStore(runtime.data_dir / "files"))


def user_files(runtime: Runtime, user: User) -> UserFiles:
    return file_store(runtime).for_user(user.name, user.quota_bytes)


def forget_user_files(runtime: Runtime):
    """The deletion hook: a deleted user's tree goes with the account."""

    async def forget(user: User) -> None:
        await asyncio.to_thread(file_store(runtime).remove_user, user.name)

    return forget
