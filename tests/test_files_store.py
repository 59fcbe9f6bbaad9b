"""The file store domain on a real filesystem: path safety, atomic writes, quota, resume."""

from __future__ import annotations

import os

import pytest

from agora.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from agora.files.store import FileStore, QuotaExceeded


@pytest.fixture
def store(tmp_path):
    return FileStore(tmp_path / "files")


@pytest.mark.parametrize("path", ["../x", "/a/../../b", "a/..", "a\x00b", "a\nb", "a\\b", "x\x7f",
                                  "a/" + "n" * 256, "/" + "d/" * 600])
def test_path_tricks_are_refused(store, path):
    files = store.for_user("alice", 10**6)
    with pytest.raises(InvalidInput):
        files.write_bytes(path, b"x")
    with pytest.raises(InvalidInput):
        files.stat(path)




def test_a_symlink_in_the_tree_is_never_followed(store, tmp_path):
    files = store.for_user("alice", 10**6)
    files.mkdir("/docs")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    os.symlink(secret, store.root / "alice" / "docs" / "link")
    os.symlink(tmp_path, store.root / "alice" / "escape")
    with pytest.raises(Forbidden):
        files.open("/docs/link")
    with pytest.raises(Forbidden):
        files.write_bytes("/escape/new.txt", b"x")
    with pytest.raises(Forbidden):
        files.list("/escape")
    assert [e.name for e in files.list("/docs")] == []  # not even listed
    assert not (tmp_path / "new.txt").exists()


def test_users_do_not_share_trees(store):
    alice, bob = store.for_user("alice", 10**6), store.for_user("bob", 10**6)
    alice.write_bytes("/note.txt", b"alice's")
    assert not bob.exists("/note.txt")
    with pytest.raises(NotFound):
        bob.open("/note.txt")


def test_failed_upload_keeps_the_old_version_and_leaves_nothing(store):
    files = store.for_user("alice", 10**6)
    files.write_bytes("/a.txt", b"version one")
    with pytest.raises(RuntimeError):
        with files.upload("/a.txt") as upload:
            upload.write(b"version two, half")
            raise RuntimeError("connection dropped")
    with files.open("/a.txt") as handle:
        assert handle.read() == b"version one"
    assert list(store.uploads.iterdir()) == []
    with pytest.raises(RuntimeError):
        with files.upload("/new.txt") as upload:
            upload.write(b"partial")
            raise RuntimeError("dropped")
    assert not files.exists("/new.txt")


def test_quota_is_enforced_while_writing(store):
    files = store.for_user("alice", 1000)
    files.write_bytes("/a", b"x" * 600)
    with pytest.raises(QuotaExceeded):
        with files.upload("/b") as upload:
            upload.write(b"y" * 300)
            upload.write(b"y" * 300)  # 1200 > 1000: refused before it is written
    assert not files.exists("/b")
    files.write_bytes("/a", b"z" * 1000)  # replacing frees the old version's bytes
    assert files.usage() == 1000


def test_resume_keeps_the_prefix(store):
    files = store.for_user("alice", 10**6)
    files.write_bytes("/big", b"0123456789")
    with files.upload("/big", offset=4) as upload:
        upload.write(b"abcdef")
    with files.open("/big") as handle:
        assert handle.read() == b"0123abcdef"
    with pytest.raises(InvalidInput):
        files.upload("/big", offset=11)


def test_folders_move_copy_delete(store):
    files = store.for_user("alice", 10**6)
    files.mkdir("/d")
    files.write_bytes("/d/f.txt", b"hello")
    with pytest.raises(Conflict):
        files.mkdir("/d")
    with pytest.raises(Conflict):
        files.delete("/d")  # not empty
    files.copy("/d", "/e")
    files.move("/e/f.txt", "/e/g.txt")
    assert [e.name for e in files.list("/e")] == ["g.txt"]
    with pytest.raises(Conflict):
        files.move("/d", "/d/inside")
    with pytest.raises(Conflict):
        files.move("/d/f.txt", "/e/g.txt")
    files.move("/d/f.txt", "/e/g.txt", overwrite=True)
    files.delete("/e", recursive=True)
    assert [e.name for e in files.list("/")] == ["d"]
    with pytest.raises(Forbidden):
        files.delete("/")
    with pytest.raises(NotFound):
        files.write_bytes("/missing/x", b"")


def test_absolute_paths_stay_inside_the_tree(store):
    files = store.for_user("alice", 10**6)
    files.mkdir("/etc")
    files.write_bytes("/etc/passwd", b"mine")
    assert (store.root / "alice" / "etc" / "passwd").read_bytes() == b"mine"
