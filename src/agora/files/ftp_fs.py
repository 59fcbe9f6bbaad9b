"""pyftpdlib's filesystem interface, over one user's :class:`UserFiles`.

pyftpdlib translates the paths a client sends into "filesystem paths" with ``ftp2fs``
and hands those to this class. Here they are the store's own virtual paths ("/" is the
root of the user's tree), so every operation goes through UserFiles (path checks,
symlink refusal, quota, atomic writes) and nothing reaches the disk any other way.
"""

from __future__ import annotations

import posixpath
import secrets
import stat
from dataclasses import dataclass

from pyftpdlib.exceptions import FilesystemError
from pyftpdlib.filesystems import AbstractedFS

from agora.core.errors import AgoraError, Forbidden, InvalidInput, NotFound, StorageFull, TooLarge
from agora.files.store import Entry, Upload, UserFiles

# What ftp2fs makes of a path that climbs above the root; validpath refuses it (and the
# store would too, as it refuses '..').
ESCAPED = "/.."


def reply_for(error: AgoraError) -> str:
    """The FTP reply for a domain error."""
    if isinstance(error, StorageFull):
        code = 452  # RFC 959: insufficient storage space in system (transient)
    elif isinstance(error, TooLarge):  # the quota included
        code = 552
    elif isinstance(error, InvalidInput):
        code = 553
    else:
        code = 550
    return f"{code} {printable(error.detail).rstrip('.')}."


def printable(text: str) -> str:
    # Details may quote a client's path; a CR or LF in it must not start a reply line.
    return "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


class Refused(FilesystemError):
    """A domain error, in the form pyftpdlib turns into a 550 reply with our text."""

    def __init__(self, error: AgoraError):
        super().__init__(printable(error.detail).rstrip("."))
        self.error = error


@dataclass(frozen=True)
class _Stat:
    """The fields of os.stat_result that pyftpdlib's LIST and MLSD formatting read."""

    st_mode: int
    st_size: int
    st_mtime: float
    st_ctime: float
    st_nlink: int = 1
    st_uid: int = 0
    st_gid: int = 0
    st_ino: int = 0
    st_dev: int = 0


def _stat(entry: Entry) -> _Stat:
    mode = (stat.S_IFDIR | 0o755) if entry.is_dir else (stat.S_IFREG | 0o644)
    return _Stat(st_mode=mode, st_size=entry.size, st_mtime=entry.mtime, st_ctime=entry.mtime)


class UploadFile:
    """What pyftpdlib writes a STOR, APPE or STOU into: an atomic :class:`Upload`.

    pyftpdlib closes its file when the data connection closes, whatever the reason;
    here closing always aborts. Only :meth:`commit`, called by the data handler once it
    knows the transfer completed, makes the data visible.
    """

    def __init__(self, upload: Upload, name: str, limit: int):
        self.upload = upload
        self.name = name
        self.limit = limit
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.upload.written + len(data) > self.limit:
            self.upload.abort()
            raise TooLarge(f"uploads are limited to {self.limit} bytes (files.max_upload)")
        self.upload.write(data)

    def commit(self) -> Entry:
        try:
            return self.upload.commit()
        finally:
            self.closed = True
            self.upload.abort()  # a no-op once committed; removes the temporary file if not

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.upload.abort()


class StoreFS(AbstractedFS):
    """One FTP session's view of its user's tree; the session sets ``files`` at login."""

    def __init__(self, root: str, cmd_channel):
        super().__init__("/", cmd_channel)
        self.files: UserFiles = cmd_channel.files

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except AgoraError as error:
            raise Refused(error) from None

    def _entry(self, path: str) -> Entry:
        return self._call(self.files.stat, path)

    # -- paths: virtual on both sides ----------------------------------------------------

    def ftp2fs(self, ftppath: str) -> str:
        # '..' is resolved against the working directory (clients send "CWD .." and
        # "RETR ../x"); one that would climb above the root makes the whole path invalid
        # rather than being clamped. The store refuses symlinks, so resolving it by name
        # matches the tree on disk.
        parts = [] if ftppath.startswith("/") else [p for p in self.cwd.split("/") if p]
        for part in ftppath.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    return ESCAPED
                parts.pop()
            else:
                parts.append(part)
        return "/" + "/".join(parts)

    def fs2ftp(self, fspath: str) -> str:
        return fspath

    def validpath(self, path: str) -> bool:
        return path != ESCAPED

    def realpath(self, path: str) -> str:
        return path

    # -- reading ------------------------------------------------------------------------

    def open(self, filename: str, mode: str):
        if set(mode) - {"r", "b"}:
            # pyftpdlib's own STOR is replaced by the session's, which writes through an
            # Upload; nothing else may open a file for writing.
            raise Refused(Forbidden("files are written only through STOR, APPE or STOU"))
        # A real file, so that sendfile() serves RETR.
        return self._call(self.files.open, filename)

    def listdir(self, path: str) -> list[str]:
        return [entry.name for entry in self._call(self.files.list, path)]

    def stat(self, path: str) -> _Stat:
        return _stat(self._entry(path))

    lstat = stat

    def _is(self, path: str, want_dir: bool) -> bool:
        try:
            return self.files.stat(path).is_dir == want_dir
        except AgoraError:
            return False

    def isfile(self, path: str) -> bool:
        return self._is(path, want_dir=False)

    def isdir(self, path: str) -> bool:
        return self._is(path, want_dir=True)

    def islink(self, path: str) -> bool:
        return False  # the store neither shows nor follows them

    def lexists(self, path: str) -> bool:
        try:
            self.files.stat(path)
        except AgoraError:
            return False
        return True

    def getsize(self, path: str) -> int:
        return self._entry(path).size

    def getmtime(self, path: str) -> float:
        return self._entry(path).mtime

    def get_user_by_uid(self, uid: int) -> str:
        return self.files.user

    def get_group_by_gid(self, gid: int) -> str:
        return self.files.user

    # -- changing -----------------------------------------------------------------------

    def chdir(self, path: str) -> None:
        if not self._entry(path).is_dir:
            raise Refused(InvalidInput(f"{path} is a file, not a folder"))
        self.cwd = path

    def mkdir(self, path: str) -> None:
        self._call(self.files.mkdir, path)

    def rmdir(self, path: str) -> None:
        if not self._entry(path).is_dir:
            raise Refused(InvalidInput(f"{path} is a file: use DELE"))
        self._call(self.files.delete, path)

    def remove(self, path: str) -> None:
        if self._entry(path).is_dir:
            raise Refused(InvalidInput(f"{path} is a folder: use RMD"))
        self._call(self.files.delete, path)

    def rename(self, src: str, dst: str) -> None:
        # Like rename(2): a file replaces a file, nothing replaces a folder.
        source = self._entry(src)
        try:
            target = self.files.stat(dst)
        except NotFound:
            target = None
        except AgoraError as error:
            raise Refused(error) from None
        overwrite = target is not None and not target.is_dir and not source.is_dir
        self._call(self.files.move, src, dst, overwrite=overwrite)

    def mkstemp(self, suffix: str = "", prefix: str = "", dir: str | None = None, mode: str = "wb"):
        """STOU: an upload under a name nobody uses yet."""
        folder = dir or self.cwd
        for _ in range(20):
            path = posixpath.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
            if not self.lexists(path):
                upload = self._call(self.files.upload, path)
                return UploadFile(upload, path, self.cmd_channel.max_upload)
        raise Refused(InvalidInput("no unused file name found"))

    def chmod(self, path: str, mode: int) -> None:
        raise Refused(Forbidden("file modes are not kept"))

    def utime(self, path: str, timeval: float) -> None:
        raise Refused(Forbidden("modification times are set by the server"))
