"""WebDAV (RFC 4918, classes 1 and 2) at /dav/: each user's own tree, for OS file
managers, davfs2 and any DAV client.

Written by hand over the files domain rather than with a WSGI DAV library: our store,
authentication and database are asynchronous or already ours, and the protocol's
server side is small once those are given. The methods live in ``dav_tree`` (content
and names), ``dav_props`` (PROPFIND, PROPPATCH) and ``dav_locking`` (LOCK, UNLOCK and
the If header); this module authenticates, maps the URL to a path in the caller's tree
and turns errors into statuses.
"""

from __future__ import annotations

import errno
import logging
from typing import Awaitable, Callable
from urllib.parse import unquote_to_bytes

from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from agora.core.errors import AgoraError
from agora.core.runtime import Runtime
from agora.files import dav_locking, dav_props, dav_tree, dav_xml
from agora.files.access import user_files
from agora.files.dav_auth import DavAuthenticator
from agora.files.dav_request import Context, DavError, status_of
from agora.files.store import split_path, virtual

log = logging.getLogger("agora.dav")

Handler = Callable[[Context], Awaitable[Response]]

METHODS: dict[str, Handler] = {
    "GET": dav_tree.get, "HEAD": dav_tree.get, "PUT": dav_tree.put, "DELETE": dav_tree.delete,
    "MKCOL": dav_tree.mkcol, "COPY": dav_tree.copy, "MOVE": dav_tree.move,
    "PROPFIND": dav_props.propfind, "PROPPATCH": dav_props.proppatch,
    "LOCK": dav_locking.lock, "UNLOCK": dav_locking.unlock,
}
ALLOW = ", ".join(["OPTIONS", *METHODS])


def request_path(scope: Scope) -> str:
    """The virtual path a request names, from the URL as sent (percent-decoded once,
    as UTF-8), so that what the store validates is exactly what the client asked for."""
    root = scope.get("root_path", "")
    raw = (scope.get("raw_path") or b"").split(b"?", 1)[0]
    if raw.startswith(root.encode()):
        try:
            path = unquote_to_bytes(raw[len(root):]).decode("utf-8")
        except UnicodeDecodeError:
            raise DavError(400, "the URL is not UTF-8") from None
    else:
        path = scope["path"][len(root):]
    return virtual(split_path(path))


def _error(error: DavError) -> Response:
    if error.condition:
        return Response(dav_xml.error_body(error.condition, error.content), error.status,
                        headers=error.headers, media_type=dav_xml.MEDIA_TYPE)
    return PlainTextResponse(error.detail + "\n", error.status, headers=error.headers)


class DavApp:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.auth = DavAuthenticator(runtime.identity)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = await self.respond(Request(scope, receive))
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            # Unauthenticated: clients (Windows' mini-redirector) probe before logging in,
            # and the answer says nothing about anyone's files.
            return Response(headers={"DAV": "1, 2", "MS-Author-Via": "DAV", "Allow": ALLOW})
        handler = METHODS.get(request.method)
        if handler is None:
            return PlainTextResponse("method not allowed\n", 405, headers={"Allow": ALLOW})
        try:
            user = await self.auth.user(request)
            path = request_path(request.scope)
            ctx = Context(request=request, runtime=self.runtime, user=user,
                          files=user_files(self.runtime, user), path=path,
                          root_path=request.scope.get("root_path", ""))
            return await handler(ctx)
        except DavError as error:
            return _error(error)
        except AgoraError as error:
            return _error(DavError(status_of(error), error.detail))
        except TimeoutError:  # before OSError, of which it is one
            return _error(DavError(408, "the upload stalled"))
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            return _error(DavError(507, "the server's disk is full"))
        except ClientDisconnect:
            log.info("%s %s: the client went away", request.method, request.url.path)
            return Response(status_code=400)


def create_app(runtime: Runtime) -> DavApp:
    return DavApp(runtime)
