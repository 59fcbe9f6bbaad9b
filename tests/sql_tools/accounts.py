"""Users for a test module, each owning the databases it names, made with one
provisioning run (each run opens the server's runtime in a subprocess: a second or two,
which per test would be most of the module's time)."""

from __future__ import annotations

import secrets
from typing import Hashable, TypeVar

from conftest import AgoraServer
from pgwire_support import Account, provision

K = TypeVar("K", bound=Hashable)


def accounts(server: AgoraServer, plan: dict[K, tuple[str, ...]]) -> dict[K, Account]:
    made = {key: Account(server, *server.create_user("pg" + secrets.token_hex(4))) for key in plan}
    provision(server, databases=[(made[key].name, db) for key, databases in plan.items() for db in databases])
    return made
