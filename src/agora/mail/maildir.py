"""Maildir on disk: the blocking file operations behind mail/store.py.

Layout is Maildir++ as Dovecot and Courier use it, so other Maildir tools can read the
tree: ``DATA_DIR/mail/<user>/`` is INBOX (``tmp``, ``new``, ``cur``) and every other
folder is a sibling directory named ``.`` + its name (``.Sent``, ``.Archive.2024``; the
IMAP hierarchy delimiter is ``.`` for that reason). Folder names are stored in UTF-8.

A message file's base name is unique and never changes; its flags travel in the
``:2,`` suffix once it moves from ``new`` to ``cur``.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from agora.core.fsutil import fsync_dir, full_disk_refused, write_synced

SUBDIRS = ("tmp", "new", "cur")
# Maildir flag letters (must be in ASCII order in a file name) and their IMAP flags.
LETTERS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered",
           "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTERS = {flag.lower(): letter for letter, flag in LETTERS.items()}
STALE_TMP_AGE = 36 * 3600.0  # the Maildir convention for abandoned tmp files

_counter = itertools.count()
_host = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def folder_dir(root: Path, name: str) -> Path:
    return root if name == "INBOX" else root / ("." + name)


def ensure_folder(path: Path) -> None:
    for sub in SUBDIRS:
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


def unique_name(size: int) -> str:
    """``<seconds>.M<usec>P<pid>Q<n>R<random>.<host>,S=<size>`` (the Maildir convention,
    plus the S= size that Dovecot reads without opening the file)."""
    now = time.time()
    return (f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}"
            f"R{secrets.token_hex(8)}.{_host},S={size}")


def write(folder: Path, raw: bytes, name: str, target: str, *, sync_dir: bool = True) -> None:
    """Write a message durably as ``target`` (``new/<name>`` or ``cur/<name>:2,...``):
    tmp file, fsync, rename, fsync the directory.

    A crash at any point leaves either nothing under ``target`` or the whole message
    (a leftover in ``tmp`` is swept later). No room on the disk: StorageFull."""
    tmp = folder / "tmp" / name
    with full_disk_refused():
        write_synced(tmp, raw, 0o600, exclusive=True)
        os.rename(tmp, folder / target)
        if sync_dir:  # else the caller fsyncs the directory (once for many files) before it tells anyone
            fsync_dir((folder / target).parent)


def link(source: Path, folder: Path, target: str) -> None:
    """Put a copy of a message file at ``folder/target`` durably: a hard link (message
    files never change, so sharing the inode is safe), else a real copy."""
    destination = folder / target
    with full_disk_refused():
        try:
            os.link(source, destination)
        except OSError:
            tmp = folder / "tmp" / destination.name.split(":2,", 1)[0]
            try:
                shutil.copyfile(source, tmp)  # buffered: a short write is retried or raises
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.rename(tmp, destination)
        fsync_dir(destination.parent)


def filename_for(name: str, flags: frozenset[str] | set[str], current: str) -> str:
    """Where a message belongs given its flags: stays in ``new`` until it has any flag
    Maildir can spell, then ``cur/<name>:2,<letters>``."""
    letters = "".join(sorted(FLAG_LETTERS[f.lower()] for f in flags if f.lower() in FLAG_LETTERS))
    if current.startswith("new/") and not letters:
        return current
    return f"cur/{name}:2,{letters}"


def flags_from_filename(filename: str) -> set[str]:
    _, sep, info = filename.rpartition(":2,")
    if not sep:
        return set()
    return {LETTERS[letter] for letter in info if letter in LETTERS}


def base_name(entry: str) -> str:
    return entry.split(":2,", 1)[0]


def move_file(folder: Path, old: str, new: str) -> str:
    """Rename a message within its folder; returns where it is now (an external tool may
    have renamed it already: then it is found by its base name)."""
    if old == new:
        return new
    try:
        os.rename(folder / old, folder / new)
    except FileNotFoundError:
        found = find(folder, base_name(old.split("/", 1)[1]))
        if found is None:
            raise
        os.rename(folder / found, folder / new)
    return new


def find(folder: Path, name: str) -> str | None:
    for sub in ("cur", "new"):
        try:
            for entry in os.listdir(folder / sub):
                if base_name(entry) == name:
                    return f"{sub}/{entry}"
        except FileNotFoundError:
            pass
    return None


def scan(folder: Path) -> dict[str, str]:
    """Every message in a folder: base name -> ``new/...`` or ``cur/...``."""
    found: dict[str, str] = {}
    for sub in ("new", "cur"):
        try:
            entries = os.listdir(folder / sub)
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.startswith("."):
                found[base_name(entry)] = f"{sub}/{entry}"
    return found


def stamp(folder: Path) -> tuple[int, int]:
    """Changes whenever a message file is added to or removed from the folder."""
    stamps = []
    for sub in ("new", "cur"):
        try:
            stamps.append(os.stat(folder / sub).st_mtime_ns)
        except FileNotFoundError:
            stamps.append(0)
    return stamps[0], stamps[1]


def sweep_tmp(folder: Path) -> None:
    cutoff = time.time() - STALE_TMP_AGE
    try:
        with os.scandir(folder / "tmp") as entries:
            for entry in entries:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
    except FileNotFoundError:
        pass


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
