"""What server.py needs from a service that owns listeners."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agora.core.runtime import Runtime


class Service(Protocol):
    name: str
    # The listener names (keys of ports.json) whose sockets this service serves.
    listeners: tuple[str, ...]

    def __init__(self, runtime: "Runtime") -> None: ...

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        """Start serving on the already-bound sockets of this service's listeners."""

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let in-flight work finish within ``timeout``, then close."""
