"""The files sub-API: ``client.files.ls/stat/get/put/rm/mv/cp/mkdir/du/share/unshare/shares``.

The JSON operations are calls, as in ``core.py``. Transfers stream through the client's
httpx connection, a chunk at a time, so they are written twice (blocking and async);
what they decide is in ``_transfer.py``, shared by both.

Both directions resume by default, keeping what an interrupted transfer left:

* ``get`` writes ``NAME.part`` beside the target and renames it once complete. A later
  ``get`` asks for the bytes from the part's size on, starting ``VERIFY`` bytes early:
  when those differ from the part's tail, the part is of another version and is
  dropped, so a resume never splices two versions.
* ``put`` of a new file larger than ``PIECE`` goes in pieces (``Content-Range``), each
  committed by the server as it arrives; a ``put`` over an existing file goes in one
  piece, so that an interruption leaves the old version whole. A later ``put`` that finds
  the remote file shorter than the local one, ending with the same ``VERIFY`` bytes as
  the local file at that place, sends only the rest, with ``If-Match`` guarding against
  a change in between.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any, AsyncIterator, Iterator
from urllib.parse import quote

import anyio
import httpx

from agora.client._http import AsyncAPI, Call, SyncAPI, _connection_failed, json_body, many, nothing, one, query
from agora.client._transfer import (CHUNK, PIECE, VERIFY, Download, Progress, Reporter, local_bytes, local_tree,
                                    part_path, pieces, read_chunks, resume_offset, safe_name)
from agora.client.errors import Conflict, NotFound, UnexpectedResponse, error_for
from agora.client.models import FileEntry, Listing, NewShare, Share, Usage, from_json

API = "/api/v1/files"
OCTETS = {"Content-Type": "application/octet-stream"}


# -- paths and calls ----------------------------------------------------------------


def segments(path: str) -> list[str]:
    parts = [part for part in str(path).split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"'..' is not allowed in remote paths: {path!r}")
    return parts


def quoted(path: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in segments(path))


def join(path: str, name: str) -> str:
    return "/" + "/".join(segments(path) + [name])


def content_url(path: str) -> str:
    return f"{API}/content{quoted(path)}"


def _listing(response: httpx.Response) -> Listing:
    data = json_body(response)
    return Listing(path=data["path"], entries=[from_json(FileEntry, item) for item in data["entries"]])


def ls(path: str) -> Call[Listing]:
    return Call("GET", f"{API}/list{quoted(path)}", _listing)


def stat(path: str) -> Call[FileEntry]:
    return Call("GET", f"{API}/stat{quoted(path)}", one(FileEntry))


def rm(path: str, recursive: bool) -> Call[None]:
    return Call("DELETE", content_url(path), nothing, params=query(recursive="true" if recursive else None))


def mkdir(path: str, parents: bool) -> Call[FileEntry]:
    return Call("POST", f"{API}/mkdir", one(FileEntry), json={"path": path, "parents": parents})


def mv(source: str, target: str, overwrite: bool) -> Call[FileEntry]:
    return Call("POST", f"{API}/move", one(FileEntry), json={"from": source, "to": target, "overwrite": overwrite})


def cp(source: str, target: str, overwrite: bool) -> Call[FileEntry]:
    return Call("POST", f"{API}/copy", one(FileEntry), json={"from": source, "to": target, "overwrite": overwrite})


def du() -> Call[Usage]:
    return Call("GET", f"{API}/usage", one(Usage))


def share(path: str, expires_in: int | float | None, password: str | None) -> Call[NewShare]:
    body: dict[str, Any] = {"path": path}
    if expires_in is not None:
        body["expires_in"] = max(1, int(expires_in))
    if password is not None:
        body["password"] = password
    return Call("POST", f"{API}/shares", one(NewShare), json=body)


def shares() -> Call[list[Share]]:
    return Call("GET", f"{API}/shares", many(Share))


def unshare(share_id: str) -> Call[None]:
    return Call("DELETE", f"{API}/shares/{quote(str(share_id), safe='')}", nothing)


def _entry_of(response: httpx.Response) -> FileEntry:
    if not response.is_success:
        raise error_for(response)
    return from_json(FileEntry, json_body(response))


# -- blocking -------------------------------------------------------------------------


class SyncFiles(SyncAPI):
    """``client.files``: one user's tree (see the module for how transfers resume)."""

    def ls(self, path: str = "/") -> list[FileEntry]:
        return self._run(ls(path)).entries

    def stat(self, path: str) -> FileEntry:
        return self._run(stat(path))

    def rm(self, path: str, *, recursive: bool = False) -> None:
        self._run(rm(path, recursive))

    def mkdir(self, path: str, *, parents: bool = False) -> FileEntry:
        return self._run(mkdir(path, parents))

    def mv(self, source: str, target: str, *, overwrite: bool = False) -> FileEntry:
        return self._run(mv(source, target, overwrite))

    def cp(self, source: str, target: str, *, overwrite: bool = False) -> FileEntry:
        return self._run(cp(source, target, overwrite))

    def du(self) -> Usage:
        return self._run(du())

    def share(self, path: str, expires_in: int | float | None = None, password: str | None = None) -> NewShare:
        return self._run(share(path, expires_in, password))

    def shares(self) -> list[Share]:
        return self._run(shares())

    def unshare(self, share_id: str) -> None:
        self._run(unshare(share_id))

    # -- transfers ----------------------------------------------------------------------

    def get(self, remote: str, local: str | os.PathLike[str], *, resume: bool = True,
            progress: Progress | None = None) -> list[FileEntry]:
        """Download a file to ``local``, or a folder to the folder ``local`` with all it
        holds; returns the files fetched."""
        entry = self.stat(remote)
        if not entry.is_dir:
            return [self._get_file(entry, Path(local), resume, progress)]
        Path(local).mkdir(parents=True, exist_ok=True)
        fetched = []
        for item, target in self._tree(entry.path, Path(local)):
            if item.is_dir:
                target.mkdir(parents=True, exist_ok=True)
            else:
                fetched.append(self._get_file(item, target, resume, progress))
        return fetched

    def put(self, local: str | os.PathLike[str], remote: str, *, resume: bool = True,
            progress: Progress | None = None) -> list[FileEntry]:
        """Upload a file to ``remote``, or a folder to the folder ``remote`` with all it
        holds (symbolic links to folders are not followed); returns the files stored."""
        source = Path(local)
        if not source.is_dir():
            return [self._put_file(source, remote, resume, progress)]
        self._ensure_dir(remote)
        stored = []
        for folder, names in local_tree(source):
            base = join(remote, "/".join(folder.relative_to(source).parts)) if folder != source else remote
            for name in names:
                if (folder / name).is_dir():
                    self._ensure_dir(join(base, name))
                else:
                    stored.append(self._put_file(folder / name, join(base, name), resume, progress))
        return stored

    @contextmanager
    def _stream(self, method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
        try:
            with self._transport.http.stream(method, url, **kwargs) as response:
                yield response
        except httpx.TransportError as error:
            raise _connection_failed(self._transport.base_url, error) from None

    def _tree(self, path: str, local: Path) -> Iterator[tuple[FileEntry, Path]]:
        """Everything below the remote folder ``path``, folders before what they hold."""
        for item in self.ls(path):
            target = local / safe_name(item.name)
            yield item, target
            if item.is_dir:
                yield from self._tree(item.path, target)

    def _get_file(self, entry: FileEntry, local: Path, resume: bool, progress: Progress | None) -> FileEntry:
        part = part_path(local)
        have = part.stat().st_size if resume and part.is_file() else 0
        while True:
            download = Download(entry, local, have, progress)
            try:
                with self._stream("GET", content_url(entry.path), headers=download.request_headers()) as response:
                    if response.status_code == 416 and have:
                        have = 0
                        continue
                    if not response.is_success:
                        response.read()
                        raise error_for(response)
                    usable = download.begin(response)
                    for chunk in response.iter_bytes(CHUNK) if usable else ():
                        if not download.feed(chunk):
                            usable = False
                            break
                    if not usable:
                        if not have:
                            raise UnexpectedResponse(response.status_code, "about:blank", "Unexpected response",
                                                     f"{entry.path}: the server sent a part of the file unasked")
                        have = 0
                        continue
                    return download.finish()
            finally:
                download.close()

    def _put_file(self, local: Path, remote: str, resume: bool, progress: Progress | None) -> FileEntry:
        size = local.stat().st_size
        existing = self._stat_or_none(remote)
        offset = resume_offset(size, existing) if resume else 0
        if offset and not self._tail_matches(local, remote, offset):
            offset = 0
        report = Reporter(remote, local, size, offset, progress)
        with open(local, "rb") as handle:
            if offset == 0 and (existing is not None or size <= PIECE):
                return self._send(remote, handle, 0, size - 1, size, None, report, whole=True)
            etag = existing.etag if offset and existing else None
            entry = existing
            for start, end in pieces(offset, size):
                entry = self._send(remote, handle, start, end, size, etag, report)
                etag = entry.etag
        assert entry is not None
        return entry

    def _send(self, remote: str, handle: IO[bytes], start: int, end: int, size: int, etag: str | None,
              report: Reporter, whole: bool = False) -> FileEntry:
        headers = {**OCTETS, "Content-Length": str(end - start + 1)}
        if not whole:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if etag:
            headers["If-Match"] = etag
        body = report.through(read_chunks(handle, start, end)) if size else iter(())
        try:
            response = self._transport.http.put(content_url(remote), content=body, headers=headers)
        except httpx.TransportError as error:
            raise _connection_failed(self._transport.base_url, error) from None
        return _entry_of(response)

    def _stat_or_none(self, path: str) -> FileEntry | None:
        try:
            return self.stat(path)
        except NotFound:
            return None

    def _tail_matches(self, local: Path, remote: str, size: int) -> bool:
        start = size - min(size, VERIFY)
        with self._stream("GET", content_url(remote), headers={"Range": f"bytes={start}-{size - 1}"}) as response:
            remote_tail = response.read()
            if response.status_code != 206:
                return False
        return remote_tail == local_bytes(local, start, size - start)

    def _ensure_dir(self, path: str) -> None:
        try:
            self.mkdir(path, parents=True)
        except Conflict:
            if not self.stat(path).is_dir:
                raise


# -- async ----------------------------------------------------------------------------


class AsyncFiles(AsyncAPI):
    """``client.files`` of the AsyncClient: the same operations, awaited."""

    async def ls(self, path: str = "/") -> list[FileEntry]:
        return (await self._run(ls(path))).entries

    async def stat(self, path: str) -> FileEntry:
        return await self._run(stat(path))

    async def rm(self, path: str, *, recursive: bool = False) -> None:
        await self._run(rm(path, recursive))

    async def mkdir(self, path: str, *, parents: bool = False) -> FileEntry:
        return await self._run(mkdir(path, parents))

    async def mv(self, source: str, target: str, *, overwrite: bool = False) -> FileEntry:
        return await self._run(mv(source, target, overwrite))

    async def cp(self, source: str, target: str, *, overwrite: bool = False) -> FileEntry:
        return await self._run(cp(source, target, overwrite))

    async def du(self) -> Usage:
        return await self._run(du())

    async def share(self, path: str, expires_in: int | float | None = None,
                    password: str | None = None) -> NewShare:
        return await self._run(share(path, expires_in, password))

    async def shares(self) -> list[Share]:
        return await self._run(shares())

    async def unshare(self, share_id: str) -> None:
        await self._run(unshare(share_id))

    # -- transfers ----------------------------------------------------------------------

    async def get(self, remote: str, local: str | os.PathLike[str], *, resume: bool = True,
                  progress: Progress | None = None) -> list[FileEntry]:
        entry = await self.stat(remote)
        if not entry.is_dir:
            return [await self._get_file(entry, Path(local), resume, progress)]
        Path(local).mkdir(parents=True, exist_ok=True)
        fetched = []
        async for item, target in self._tree(entry.path, Path(local)):
            if item.is_dir:
                target.mkdir(parents=True, exist_ok=True)
            else:
                fetched.append(await self._get_file(item, target, resume, progress))
        return fetched

    async def put(self, local: str | os.PathLike[str], remote: str, *, resume: bool = True,
                  progress: Progress | None = None) -> list[FileEntry]:
        source = Path(local)
        if not source.is_dir():
            return [await self._put_file(source, remote, resume, progress)]
        await self._ensure_dir(remote)
        stored = []
        for folder, names in local_tree(source):
            base = join(remote, "/".join(folder.relative_to(source).parts)) if folder != source else remote
            for name in names:
                if (folder / name).is_dir():
                    await self._ensure_dir(join(base, name))
                else:
                    stored.append(await self._put_file(folder / name, join(base, name), resume, progress))
        return stored

    @asynccontextmanager
    async def _stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        try:
            async with self._transport.http.stream(method, url, **kwargs) as response:
                yield response
        except httpx.TransportError as error:
            raise _connection_failed(self._transport.base_url, error) from None

    async def _tree(self, path: str, local: Path) -> AsyncIterator[tuple[FileEntry, Path]]:
        for item in await self.ls(path):
            target = local / safe_name(item.name)
            yield item, target
            if item.is_dir:
                async for pair in self._tree(item.path, target):
                    yield pair

    async def _get_file(self, entry: FileEntry, local: Path, resume: bool, progress: Progress | None) -> FileEntry:
        part = part_path(local)
        have = part.stat().st_size if resume and part.is_file() else 0
        while True:
            download = Download(entry, local, have, progress)
            try:
                async with self._stream("GET", content_url(entry.path), headers=download.request_headers()) as response:
                    if response.status_code == 416 and have:
                        have = 0
                        continue
                    if not response.is_success:
                        await response.aread()
                        raise error_for(response)
                    usable = download.begin(response)
                    if usable:
                        async for chunk in response.aiter_bytes(CHUNK):
                            if not download.feed(chunk):
                                usable = False
                                break
                    if not usable:
                        if not have:
                            raise UnexpectedResponse(response.status_code, "about:blank", "Unexpected response",
                                                     f"{entry.path}: the server sent a part of the file unasked")
                        have = 0
                        continue
                    return download.finish()
            finally:
                download.close()

    async def _put_file(self, local: Path, remote: str, resume: bool, progress: Progress | None) -> FileEntry:
        size = local.stat().st_size
        existing = await self._stat_or_none(remote)
        offset = resume_offset(size, existing) if resume else 0
        if offset and not await self._tail_matches(local, remote, offset):
            offset = 0
        report = Reporter(remote, local, size, offset, progress)
        with open(local, "rb") as handle:
            if offset == 0 and (existing is not None or size <= PIECE):
                return await self._send(remote, handle, 0, size - 1, size, None, report, whole=True)
            etag = existing.etag if offset and existing else None
            entry = existing
            for start, end in pieces(offset, size):
                entry = await self._send(remote, handle, start, end, size, etag, report)
                etag = entry.etag
        assert entry is not None
        return entry

    async def _send(self, remote: str, handle: IO[bytes], start: int, end: int, size: int, etag: str | None,
                    report: Reporter, whole: bool = False) -> FileEntry:
        headers = {**OCTETS, "Content-Length": str(end - start + 1)}
        if not whole:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if etag:
            headers["If-Match"] = etag

        async def body() -> AsyncIterator[bytes]:
            # Read in a thread, reported here: progress callbacks run on the caller's loop.
            chunks = read_chunks(handle, start, end) if size else iter(())
            while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
                yield chunk
                report.advance(len(chunk))

        try:
            response = await self._transport.http.put(content_url(remote), content=body(), headers=headers)
        except httpx.TransportError as error:
            raise _connection_failed(self._transport.base_url, error) from None
        return _entry_of(response)

    async def _stat_or_none(self, path: str) -> FileEntry | None:
        try:
            return await self.stat(path)
        except NotFound:
            return None

    async def _tail_matches(self, local: Path, remote: str, size: int) -> bool:
        start = size - min(size, VERIFY)
        async with self._stream("GET", content_url(remote), headers={"Range": f"bytes={start}-{size - 1}"}) as response:
            remote_tail = await response.aread()
            if response.status_code != 206:
                return False
        return remote_tail == local_bytes(local, start, size - start)

    async def _ensure_dir(self, path: str) -> None:
        try:
            await self.mkdir(path, parents=True)
        except Conflict:
            if not (await self.stat(path)).is_dir:
                raise
