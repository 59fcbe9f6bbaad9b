"""Each user's file tree: paths, quotas and atomic writes, for every protocol at once.

A tree lives at ``DATA_DIR/files/<user>/``. FTP, WebDAV, the HTTP API and users' sites
all go through :class:`UserFiles`, so path safety, quota and durability are decided here
and nowhere else. The methods are blocking (plain file I/O); async adapters call them
in a thread.

Paths given to this module are virtual: ``/`` is the root of the user's tree, ``..``
is refused rather than clamped (a client that sends it is confused or hostile), and no
component may be a symlink, whoever put it there.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from agora.core.errors import Conflict, Forbidden, InvalidInput, NotFound, StorageFull, TooLarge
from agora.core.fsutil import fsync_dir as _fsync_dir
from agora.core.fsutil import full_disk_refused, write_all

MAX_NAME_BYTES = 255
MAX_PATH_CHARS = 1024
# A user's usage is recounted from disk when the cached figure is older than this, so
# that changes made behind our back (or on another node) are seen eventually.
USAGE_TTL = 60.0
UPLOADS_DIR = ".uploads"  # under files/, never a user name (names start with a letter)
COPY_CHUNK = 1024 * 1024
STALE_UPLOAD_AGE = 24 * 3600.0


class QuotaExceeded(TooLarge):
    slug, title = "quota-exceeded", "Storage quota exceeded"


def file_etag(size: int, mtime_ns: int) -> str:
    """The one ETag of a file version, whichever protocol serves it."""
    return f'"{size:x}-{mtime_ns:x}"'


@dataclass(frozen=True)
class Entry:
    path: str  # virtual, "/" for the root
    name: str
    is_dir: bool
    size: int
    mtime: float
    mtime_ns: int

    @property
    def etag(self) -> str:
        return file_etag(self.size, self.mtime_ns)


def split_path(path: str) -> list[str]:
    """The components of a virtual path, validated; [] is the root."""
    if not isinstance(path, str):
        raise InvalidInput("a path is text")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidInput(f"paths are at most {MAX_PATH_CHARS} characters")
    if "\\" in path:
        raise InvalidInput("backslashes are not allowed in paths")
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise InvalidInput("'..' is not allowed in paths")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise InvalidInput("control characters (NUL included) are not allowed in names")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise InvalidInput(f"names are at most {MAX_NAME_BYTES} bytes")
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("names must be valid UTF-8") from None
        parts.append(part)
    return parts


def virtual(parts: list[str]) -> str:
    return "/" + "/".join(parts)


class FileStore:
    """All users' trees; hands out one user's view with :meth:`for_user`."""

    def __init__(self, root: Path):
        self.root = root
        self.uploads = root / UPLOADS_DIR
        self.uploads.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sweep_uploads()
        self._usage: dict[str, tuple[int, float]] = {}
        # Bytes that uploads in flight have claimed and not yet committed, per user: the
        # quota is checked against usage + these, and a claim is taken before each chunk
        # is written, so concurrent uploads (any protocol) cannot pass it together.
        self._reserved: dict[str, int] = {}
        # Counts each user's committed changes, so that a recount from disk that raced
        # with one is not trusted.
        self._epoch: dict[str, int] = {}
        # How often each name's tree was removed (its account deleted): a view made
        # before that (a request in flight) must not create the home again for a later
        # account of the same name to inherit.
        self.removals: dict[str, int] = {}
        self._lock = threading.Lock()  # FTP runs in its own thread; the usage cache is shared
        # Counts the changes to file contents made through this store (any protocol), so
        # that what caches them (users' sites) can tell at no cost that nothing changed.
        self.generation = 0

    def changed(self) -> None:
        """Called after a file was written, replaced, moved or removed."""
        self.generation += 1  # only ever compared for inequality: a lost race still changes it

    def _sweep_uploads(self) -> None:
        # Left by a crash mid-upload. Only old ones: on a shared filesystem another node
        # may be writing the recent ones right now.
        horizon = time.time() - STALE_UPLOAD_AGE
        for leftover in self.uploads.glob("*.part"):
            try:
                if leftover.stat().st_mtime < horizon:
                    leftover.unlink()
            except FileNotFoundError:
                pass

    def for_user(self, name: str, quota: int) -> "UserFiles":
        return UserFiles(self, name, quota)

    def remove_user(self, name: str) -> None:
        with self._lock:
            self.removals[name] = self.removals.get(name, 0) + 1
        tree = self.root / name
        if tree.is_dir() and not tree.is_symlink():
            shutil.rmtree(tree)
            self.changed()
        with self._lock:
            self._usage.pop(name, None)

    # -- usage accounting, shared by every UserFiles of a user ---------------------------

    def usage(self, name: str, tree: Path) -> int:
        counts = 0
        while True:
            with self._lock:
                cached = self._usage.get(name)
                if cached and time.monotonic() - cached[1] < USAGE_TTL:
                    return cached[0]
                epoch = self._epoch.get(name, 0)
            total = _tree_size(tree)
            counts += 1
            with self._lock:
                # A commit or delete during the count may or may not be in it: count again
                # (the third count is kept anyway; the next recount corrects it).
                if self._epoch.get(name, 0) == epoch or counts == 3:
                    self._usage[name] = (total, time.monotonic())
                    return total

    def adjust_usage(self, name: str, delta: int) -> None:
        self.settle(name, 0, delta)

    def reserve(self, name: str, tree: Path, quota: int, amount: int) -> None:
        """Claim ``amount`` more bytes of ``name``'s quota for an upload in flight, or
        raise QuotaExceeded; the check and the claim are one step."""
        self.usage(name, tree)  # a fresh figure (may count the tree) outside the lock
        with self._lock:
            cached = self._usage.get(name)
            used = cached[0] if cached else 0
            reserved = self._reserved.get(name, 0)
            if used + reserved + amount > quota:
                raise QuotaExceeded(f"storing this would exceed the quota of {quota} bytes")
            self._reserved[name] = reserved + amount

    def room(self, name: str, tree: Path, quota: int) -> int:
        """Bytes of ``name``'s quota neither used nor claimed, now."""
        used = self.usage(name, tree)
        with self._lock:
            return quota - used - self._reserved.get(name, 0)

    def settle(self, name: str, released: int, delta: int) -> None:
        """Give back ``released`` claimed bytes and count ``delta`` bytes of usage, at
        once: a committed upload's bytes move from the claims to the usage in one step."""
        with self._lock:
            left = self._reserved.get(name, 0) - released
            if left > 0:
                self._reserved[name] = left
            else:
                self._reserved.pop(name, None)
            self._epoch[name] = self._epoch.get(name, 0) + 1
            cached = self._usage.get(name)
            if cached:
                self._usage[name] = (max(0, cached[0] + delta), cached[1])


def _tree_size(path: Path) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


class UserFiles:
    """One user's tree, as every protocol adapter sees it after authentication."""

    def __init__(self, store: FileStore, user: str, quota: int):
        self.store = store
        self.user = user
        self.quota = quota
        self.root = store.root / user
        self._removals = store.removals.get(user, 0)

    # -- paths ------------------------------------------------------------------------

    def resolve(self, path: str) -> tuple[list[str], Path]:
        """The validated components and the real location of a virtual path.

        Every existing component is checked with lstat: a symlink anywhere in the way is
        refused, so nothing placed in the tree can lead outside it.
        """
        parts = split_path(path)
        if self.store.removals.get(self.user, 0) != self._removals:
            raise NotFound(f"{virtual(parts)}: this account was deleted")
        with full_disk_refused():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
        current = self.root
        for part in parts:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                continue  # may be created (but nothing below a missing dir will exist)
            except NotADirectoryError:
                raise NotFound(f"{virtual(parts)}: a parent is a file") from None
            if stat.S_ISLNK(mode):
                raise Forbidden(f"{virtual(parts)}: symbolic links are not followed")
        return parts, current

    def _entry(self, parts: list[str], real: Path) -> Entry:
        try:
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{virtual(parts)}: no such file or folder") from None
        if stat.S_ISLNK(st.st_mode):
            raise Forbidden(f"{virtual(parts)}: symbolic links are not followed")
        is_dir = stat.S_ISDIR(st.st_mode)
        return Entry(path=virtual(parts), name=parts[-1] if parts else "", is_dir=is_dir,
                     size=0 if is_dir else st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns)

    # -- reading ----------------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        return self._entry(*self.resolve(path))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def list(self, path: str = "/") -> list[Entry]:
        parts, real = self.resolve(path)
        if not self._entry(parts, real).is_dir:
            raise Conflict(f"{virtual(parts)} is a file, not a folder")
        entries = []
        with os.scandir(real) as it:
            for item in it:
                if item.is_symlink():
                    continue  # never shown, never followed
                entries.append(self._entry(parts + [item.name], Path(item.path)))
        return sorted(entries, key=lambda e: (not e.is_dir, e.name))

    def walk(self, path: str = "/") -> Iterator[Entry]:
        """Every entry below ``path``, parents before children."""
        for entry in self.list(path):
            yield entry
            if entry.is_dir:
                yield from self.walk(entry.path)

    def open(self, path: str) -> BinaryIO:
        parts, real = self.resolve(path)
        if self._entry(parts, real).is_dir:
            raise Conflict(f"{virtual(parts)} is a folder")
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        return os.fdopen(fd, "rb")

    def usage(self) -> int:
        return self.store.usage(self.user, self.root)

    # -- writing ----------------------------------------------------------------------

    def upload(self, path: str, *, offset: int = 0) -> "Upload":
        """Start writing ``path``; ``offset`` > 0 resumes: the first ``offset`` bytes are
        kept from the current version (REST+STOR, APPE, Content-Range)."""
        parts, real = self.resolve(path)
        if not parts:
            raise Conflict("cannot write to the root folder")
        parent = real.parent
        if not parent.is_dir():
            raise NotFound(f"{virtual(parts[:-1])}: no such folder")
        old_size = 0
        if os.path.lexists(real):
            entry = self._entry(parts, real)
            if entry.is_dir:
                raise Conflict(f"{virtual(parts)} is a folder")
            old_size = entry.size
        if offset < 0 or offset > old_size:
            raise InvalidInput(f"cannot resume at byte {offset}: the file has {old_size} bytes")
        return Upload(self, parts, real, offset, old_size)

    def write_bytes(self, path: str, data: bytes) -> Entry:
        with self.upload(path) as upload:
            upload.write(data)
        return upload.entry

    def mkdir(self, path: str, *, parents: bool = False) -> Entry:
        parts, real = self.resolve(path)
        if not parts:
            raise Conflict("the root folder exists")
        try:
            with full_disk_refused():
                if parents:
                    real.mkdir(parents=True, exist_ok=False)
                else:
                    real.mkdir()
                _fsync_dir(real.parent)
        except FileExistsError:
            raise Conflict(f"{virtual(parts)} already exists") from None
        except FileNotFoundError:
            raise NotFound(f"{virtual(parts[:-1])}: no such folder") from None
        return self._entry(parts, real)

    def delete(self, path: str, *, recursive: bool = False) -> None:
        parts, real = self.resolve(path)
        if not parts:
            raise Forbidden("the root folder cannot be deleted")
        entry = self._entry(parts, real)
        if entry.is_dir:
            if recursive:
                freed = _tree_size(real)
                shutil.rmtree(real)
            else:
                try:
                    real.rmdir()
                except OSError as error:
                    if error.errno == errno.ENOTEMPTY:
                        raise Conflict(f"{virtual(parts)} is not empty") from None
                    raise
                freed = 0
        else:
            freed = entry.size
            real.unlink()
        self.store.changed()
        _fsync_dir(real.parent)
        self.store.adjust_usage(self.user, -freed)

    def move(self, src: str, dst: str, *, overwrite: bool = False) -> Entry:
        src_parts, src_real = self.resolve(src)
        dst_parts, dst_real = self.resolve(dst)
        if not src_parts or not dst_parts:
            raise Forbidden("the root folder cannot be moved or replaced")
        self._entry(src_parts, src_real)  # must exist
        if dst_parts[:len(src_parts)] == src_parts and dst_parts != src_parts:
            raise Conflict("cannot move a folder into itself")
        if not dst_real.parent.is_dir():
            raise NotFound(f"{virtual(dst_parts[:-1])}: no such folder")
        if os.path.lexists(dst_real):
            if not overwrite:
                raise Conflict(f"{virtual(dst_parts)} already exists")
            if src_real != dst_real:
                self.delete(virtual(dst_parts), recursive=True)
        os.rename(src_real, dst_real)
        self.store.changed()
        _fsync_dir(dst_real.parent)
        if dst_real.parent != src_real.parent:
            _fsync_dir(src_real.parent)
        return self._entry(dst_parts, dst_real)

    def copy(self, src: str, dst: str, *, overwrite: bool = False) -> Entry:
        """Copy a file or a folder tree; counts against the quota like any upload."""
        src_parts, src_real = self.resolve(src)
        dst_parts, dst_real = self.resolve(dst)
        source = self._entry(src_parts, src_real)
        if not dst_parts:
            raise Forbidden("the root folder cannot be replaced")
        if source.is_dir and dst_parts[:len(src_parts)] == src_parts:
            raise Conflict("cannot copy a folder into itself")
        if os.path.lexists(dst_real):
            if not overwrite:
                raise Conflict(f"{virtual(dst_parts)} already exists")
            self.delete(virtual(dst_parts), recursive=True)
        if not source.is_dir:
            with self.open(virtual(src_parts)) as reader, self.upload(virtual(dst_parts)) as upload:
                while chunk := reader.read(COPY_CHUNK):
                    upload.write(chunk)
        else:
            self.mkdir(virtual(dst_parts))
            try:
                for entry in self.list(virtual(src_parts)):
                    self.copy(entry.path, virtual(dst_parts + [entry.name]))
            except BaseException:
                # Refused part-way (quota, full disk): no half copy is left behind.
                self.delete(virtual(dst_parts), recursive=True)
                raise
        return self.stat(virtual(dst_parts))


class Upload:
    """One atomic write: data goes to a temporary file that replaces the target only on
    :meth:`commit`, after fsync; until then (and after any failure) the old version
    stays as it was, and nothing appears under the final name.

    Used as a context manager, it commits when the block ends normally and aborts on an
    exception.
    """

    def __init__(self, files: UserFiles, parts: list[str], target: Path, offset: int, old_size: int):
        self.files = files
        self.parts = parts
        self.target = target
        self.old_size = old_size
        self.written = offset
        # Bytes of the quota this upload holds (FileStore.reserve). Replacing the old
        # version frees its size, so only what goes past it is claimed.
        self.claimed = 0
        self.tmp = files.store.uploads / f"{files.user}.{secrets.token_hex(8)}.part"
        self.entry: Entry | None = None
        self.done = False
        files.usage()  # counted now (in the caller's thread), so allowance need not count
        # Unbuffered: writes arrive in large chunks anyway, and copy_file_range below
        # moves the descriptor's offset behind a buffer's back.
        with full_disk_refused():
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        if offset:
            try:
                self._keep_prefix(offset)
            except BaseException:
                self.abort()
                raise

    def _keep_prefix(self, offset: int) -> None:
        with open(os.open(self.target, os.O_RDONLY | os.O_NOFOLLOW), "rb") as old, full_disk_refused():
            remaining = offset
            while remaining:
                copied = os.copy_file_range(old.fileno(), self.fd, remaining)
                if copied == 0:
                    raise Conflict(f"{virtual(self.parts)} shrank while its upload was resumed")
                remaining -= copied

    @property
    def allowance(self) -> int:
        """The largest size the file may reach, quota-wise, as things stand (a request
        that declares its length is refused up front when it will not fit)."""
        return self.old_size + self.claimed + self.files.store.room(self.files.user, self.files.root,
                                                                    self.files.quota)

    def check_fits(self, size: int) -> None:
        """Refuse up front a file of ``size`` bytes (a declared length) that cannot fit:
        QuotaExceeded, or StorageFull when the disk has less room left (a hint only:
        every chunk is still checked as it is written)."""
        if size > self.allowance:
            raise QuotaExceeded(f"storing {size} bytes would exceed the quota of {self.files.quota} bytes")
        st = os.statvfs(self.tmp.parent)
        if size - self.written > st.f_bavail * st.f_frsize:
            raise StorageFull(f"the server's disk has no room for {size} bytes")

    def write(self, data: bytes | bytearray) -> None:
        """Append all of ``data``, or abort the upload and raise (QuotaExceeded,
        StorageFull...): an upload is never left holding fewer bytes than it was given."""
        try:
            need = max(0, self.written + len(data) - self.old_size) - self.claimed
            if need > 0:
                self.files.store.reserve(self.files.user, self.files.root, self.files.quota, need)
                self.claimed += need
            write_all(self.fd, data)
        except BaseException:
            self.abort()
            raise
        self.written += len(data)

    def commit(self) -> Entry:
        try:
            with full_disk_refused():
                os.fsync(self.fd)
                if not self.target.parent.is_dir():
                    raise NotFound(f"{virtual(self.parts[:-1])}: the folder was removed during the upload")
                try:
                    replaced = os.lstat(self.target).st_size
                except FileNotFoundError:
                    replaced = 0
                os.replace(self.tmp, self.target)
        except BaseException:
            self.abort()
            raise
        self.done = True
        os.close(self.fd)
        self.files.store.settle(self.files.user, self.claimed, self.written - replaced)
        self.files.store.changed()
        _fsync_dir(self.target.parent)
        self.entry = self.files._entry(self.parts, self.target)
        return self.entry

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self.files.store.settle(self.files.user, self.claimed, 0)
        try:
            os.close(self.fd)
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Upload":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.done:
            self.commit()
        else:
            self.abort()
