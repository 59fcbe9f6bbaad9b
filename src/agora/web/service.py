"""The web service: the HTTP and HTTPS listeners, served by uvicorn on our event loop."""

from __future__ import annotations

import asyncio
import math
import socket

import uvicorn

from agora.core import descriptors
from agora.core.runtime import Runtime
from agora.core.tls import server_context
from agora.web.app import create_app
from agora.web.guard import Guard
from agora.web.sendfile import sendfile_protocol


class WebService:
    name = "web"
    listeners = ("http", "https")

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.app = create_app(runtime)
        # File bodies go out with sendfile(2) on plain HTTP (see web/sendfile.py).
        self.http_protocol: str | type = sendfile_protocol()
        if runtime.config.files.enabled:
            # Users' sites are answered before ASGI when their pages are in memory.
            from agora.files.sites import SitesFastPath
            self.app = SitesFastPath(self.app, runtime)
            self.http_protocol = self.app.http_protocol
        self.servers: list[uvicorn.Server] = []
        self.tickers: list[asyncio.Task[None]] = []

    def _server(self, listener: str) -> uvicorn.Server:
        config = self.runtime.config
        trusted = config.http.trusted_proxies
        uv_config = uvicorn.Config(
            self.app,
            http=self.http_protocol,
            lifespan="off",  # two listeners share one app; the runtime owns start-up
            log_config=None,
            access_log=False,
            server_header=False,
            # uvicorn adds these to every answer, the sites' fast path included.
            headers=[("strict-transport-security", config.http.hsts)] if listener == "https" and config.http.hsts else None,
            ws="none",
            # X-Forwarded-For is believed only from configured proxies; uvicorn's
            # default would trust 127.0.0.1, letting any local client pick its address
            # and so dodge the login rate limit.
            proxy_headers=bool(trusted),
            forwarded_allow_ips=trusted or "",
            timeout_keep_alive=max(1, math.ceil(config.http.keepalive_timeout)),
            limit_concurrency=config.http.max_connections,
            timeout_graceful_shutdown=max(1, math.ceil(config.shutdown_timeout)),
            backlog=descriptors.backlog(config),
        )
        uv_config.load()
        if listener == "https":
            assert self.runtime.tls is not None
            uv_config.ssl = server_context(self.runtime.tls)
        server = uvicorn.Server(uv_config)
        server.lifespan = uv_config.lifespan_class(uv_config)
        # The head deadline and per-address limit the protocol enforces (web/guard.py).
        server.server_state.guard = Guard(  # type: ignore[attr-defined]
            config.http.header_timeout, config.http.max_connections_per_ip, trusted)
        return server

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        for listener, sock in sockets.items():
            server = self._server(listener)
            await server.startup(sockets=[sock])
            self.servers.append(server)
            # uvicorn's own housekeeping loop: refreshes the Date header every second.
            self.tickers.append(asyncio.create_task(server.main_loop(), name=f"uvicorn-{listener}"))
            state = server.server_state
            self.runtime.metrics.count_connections(listener, lambda state=state: len(state.connections))

    async def stop(self, timeout: float) -> None:
        # uvicorn's shutdown stops accepting, lets responses in flight finish (bounded by
        # timeout_graceful_shutdown) and then cancels what is left.
        for server in self.servers:
            server.should_exit = True
        await asyncio.gather(*self.tickers)
        await asyncio.gather(*(server.shutdown() for server in self.servers))
