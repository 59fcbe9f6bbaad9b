"""Sending as a user: the one path for SMTP submission, the HTTP API and the webmail.

The envelope sender must be one of the user's addresses; local recipients get the
message delivered at once, others go to the outbound queue; a copy is kept in the
sender's Sent folder. Every part is durable before this returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agora.core.errors import Forbidden, InvalidInput, NotFound, TooLarge
from agora.core.identity import User
from agora.core.runtime import Runtime
from agora.mail.addresses import split
from agora.mail.store import Delivery, mail_store

log = logging.getLogger("agora.mail")


@dataclass(frozen=True)
class Sent:
    delivered: list[Delivery]  # local recipients
    queued: list[str]  # remote addresses handed to the outbound queue
    queue_id: str | None
    sent_uid: int | None  # the copy in the sender's Sent folder


async def check_sender(runtime: Runtime, user: User, sender: str) -> None:
    if not await mail_store(runtime).owns_address(user, sender):
        raise Forbidden(f"{user.name} may not send as {sender}")


async def route(runtime: Runtime, recipients: list[str]) -> tuple[list[str], list[str]]:
    """(local user names, remote addresses); NotFound for an unknown local address."""
    store = mail_store(runtime)
    local: list[str] = []
    remote: list[str] = []
    for address in recipients:
        _, domain = split(address)
        if store.is_local_domain(domain):
            name = await store.resolve(address)
            if name is None:
                raise NotFound(f"no mailbox {address}")
            local.append(name)
        else:
            remote.append(address)
    return local, remote


async def send(runtime: Runtime, user: User, sender: str, recipients: list[str], raw: bytes, *,
               keep_copy: bool = True, dedupe_key: str | None = None) -> Sent:
    if not recipients:
        raise InvalidInput("no recipients")
    await check_sender(runtime, user, sender)
    local, remote = await route(runtime, recipients)
    store = mail_store(runtime)
    delivered = await store.deliver(local, raw, dedupe_key=dedupe_key) if local else []
    queue_id = None
    if remote:
        from agora.mail.outbound import outbound_queue

        queue_id = await outbound_queue(runtime).enqueue(sender, remote, raw, dedupe_key=dedupe_key)
    sent_uid = None
    if keep_copy:
        # The message has gone out: a full Sent folder must not turn that into an error
        # the client would answer by sending it again.
        try:
            _, sent_uid = await store.append(user, "Sent", raw, flags=("\\Seen",))
        except TooLarge as error:
            log.warning("no Sent copy for %s: %s", user.name, error)
    return Sent(delivered, remote, queue_id, sent_uid)
