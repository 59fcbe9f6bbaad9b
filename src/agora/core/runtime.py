"""Everything a running Agora shares between services: config, storage, identity.

The CLI's admin commands open the same Runtime (without listeners), so they work on the
data dir whether or not a server is running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from agora.config import Config
from agora.core.audit import AuditLog
from agora.core.database import Database, engine_url
from agora.core.identity import Identity
from agora.core.metrics import Metrics
from agora.core.passwords import generate_password
from agora.core.tls import CertificatePaths, ensure_certificate

log = logging.getLogger("agora")
T = TypeVar("T")


@dataclass
class Runtime:
    config: Config
    data_dir: Path
    db: Database
    audit: AuditLog
    identity: Identity
    metrics: Metrics = field(default_factory=Metrics)
    tls: CertificatePaths | None = None
    # Each service's domain objects (its store, ledger...), made once per process and
    # shared by all of its adapters: see :meth:`shared`.
    state: dict[str, Any] = field(default_factory=dict)
    # Closed (in reverse order) before storage: what a service started for this process,
    # e.g. the SQL engine a CLI command had to start. Each must be safe to call twice.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def shared(self, key: str, make: Callable[[], T]) -> T:
        if key not in self.state:
            self.state[key] = make()
        return self.state[key]

    @classmethod
    async def open(cls, config: Config, *, serving: bool = False) -> "Runtime":
        """Open (creating on first use) the data dir and the metadata database.

        With ``serving``, also the TLS certificate and, on first start, the admin account.
        """
        data_dir = config.data_path
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (data_dir / "run").mkdir(exist_ok=True)
        db = Database(engine_url(config.database.url, data_dir), pool_size=config.database.pool_size,
                      busy_timeout=config.database.busy_timeout, sqlite_cache=config.database.sqlite_cache,
                      sqlite_checkpoint=config.database.sqlite_checkpoint)
        try:
            await db.migrate()
            audit = AuditLog(db)
            runtime = cls(config=config, data_dir=data_dir, db=db, audit=audit,
                          identity=Identity(db, audit, config))
            if serving:
                runtime.tls = ensure_certificate(data_dir, config.tls.cert, config.tls.key,
                                                 config.tls.hostnames)
                runtime.identity.login_observers.append(runtime.metrics.login)
                await runtime._first_admin()
        except BaseException:
            await db.close()
            raise
        return runtime

    async def _first_admin(self) -> None:
        name = self.config.admin.name
        password = self.config.admin.password
        generated = not password
        if generated:
            password = generate_password()
        if await self.identity.ensure_admin(name, password):
            log.info("created the admin account %r", name)
            if generated:
                # Printed once on stdout, never logged: logs are kept and shipped around.
                print(f"\n  Agora admin account created: user {name!r}, password {password}\n"
                      "  (shown only this once; change it with `agora user passwd "
                      f"{name}`)\n", flush=True)

    async def close(self) -> None:
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:
                log.exception("closing %r failed", close)
        await self.db.close()

