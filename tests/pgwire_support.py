"""What the PostgreSQL wire-protocol tests share: an Agora server of their own (short
query time limit), users made through the admin API, databases and grants made through
the domain on the server's data dir (the HTTP API is tested elsewhere), connection
strings."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass

from conftest import AgoraServer, clean_env

QUERY_TIMEOUT = 2.0
_PROVISION = r"""
import asyncio, json, sys
from agora import config as configuration
from agora.core.runtime import Runtime
from agora.server import attach_services
from agora.sql.hosted import hosted_sql

async def main(plan):
    runtime = await Runtime.open(configuration.load({}))
    attach_services(runtime)
    hosted = hosted_sql(runtime)
    try:
        for owner, name in plan["databases"]:
            await hosted.create(await runtime.identity.get_user(owner), name)
        for owner, name, grantee, access in plan["grants"]:
            await hosted.grant(await runtime.identity.get_user(owner), name, grantee, access)
        for name in plan["disable"]:
            await runtime.identity.update_user(name, disabled=True)
        if plan["forget_verifiers"]:
            # As users from before SCRAM verifiers existed are stored.
            from sqlalchemy import update
            from agora.core.tables import users
            async with runtime.db.write() as conn:
                await conn.execute(update(users).where(users.c.name.in_(plan["forget_verifiers"]))
                                   .values(scram_verifier=None))
    finally:
        await hosted.close()
        await runtime.close()

asyncio.run(main(json.loads(sys.argv[1])))
"""


def server_env() -> dict[str, str]:
    return {"AGORA_SQL_QUERY_TIMEOUT": str(QUERY_TIMEOUT), "AGORA_IDENTITY_ARGON2_TIME_COST": "1",
            "AGORA_IDENTITY_ARGON2_MEMORY_KIB": "1024"}


def provision(server: AgoraServer, databases=(), grants=(), disable=(), forget_verifiers=()) -> None:
    env = clean_env(AGORA_DATA_DIR=str(server.data_dir))
    # The server's engine (external on the postgresql backend, with names of its own).
    env.update({k: v for k, v in server.env.items() if k.startswith("AGORA_SQL_")})
    if server.database_url:
        env["AGORA_DATABASE_URL"] = server.database_url
    plan = json.dumps({"databases": list(databases), "grants": list(grants), "disable": list(disable),
                       "forget_verifiers": list(forget_verifiers)})
    done = subprocess.run([sys.executable, "-c", _PROVISION, plan], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


@dataclass
class Account:
    server: AgoraServer
    name: str
    password: str

    @property
    def port(self) -> int:
        return self.server.ports["postgres"]

    def dsn(self, database: str, password: str | None = None, sslmode: str = "require") -> str:
        return (f"host=127.0.0.1 port={self.port} user={self.name} dbname={database} "
                f"password={self.password if password is None else password} sslmode={sslmode} connect_timeout=10")


def account(server: AgoraServer, *databases: str) -> Account:
    """A new user owning the named databases."""
    name, password = server.create_user("pg" + secrets.token_hex(4))
    if databases:
        provision(server, databases=[(name, db) for db in databases])
    return Account(server, name, password)
