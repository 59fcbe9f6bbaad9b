"""`agora files ...` as a subprocess against a real server, logged in with `agora login`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agora.client import Client


def agora(*args: str, home: Path, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "agora", *args], input=input, env=env, cwd=cwd or home,
                          capture_output=True, text=True, timeout=120, start_new_session=True)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


@pytest.fixture
def session(server, tmp_path):
    """A home whose `agora login` is done: (home, user name, password)."""
    name, password = server.create_user()
    home = tmp_path / "home"
    home.mkdir()
    ok(agora("login", server.url, "--user", name, "--password-stdin", home=home, input=password + "\n"))
    return home, name, password


def make_tree(root: Path) -> dict[str, bytes]:
    contents = {"top.txt": b"top\n", "a/b/deep.bin": os.urandom(300_000), "a/empty.txt": b"",
                "sp ace/\u00e9t\u00e9.txt": "été".encode()}
    for relative, data in contents.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return contents


def test_put_get_ls_du_recursively(session):
    home, _, _ = session
    contents = make_tree(home / "tree")

    put = ok(agora("files", "put", "tree", home=home))  # into the root folder: /tree
    assert "4 file(s)" in put.stdout and "/tree" in put.stdout
    assert "sent /tree/a/b/deep.bin" in put.stderr  # one line per file once its bar is done

    listing = ok(agora("files", "ls", "/tree", home=home)).stdout.splitlines()
    rows = [re.fullmatch(r"([d-]) +(.+?)  \d{4}-\d\d-\d\d \d\d:\d\d  (.+)", line).groups() for line in listing]
    assert rows == [("d", "-", "a/"), ("d", "-", "sp ace/"), ("-", "4 B", "top.txt")]

    ok(agora("files", "get", "/tree", "copy", home=home))
    for relative, data in contents.items():
        assert (home / "copy" / relative).read_bytes() == data, relative
    ok(agora("files", "get", "/tree", ".", home=home, cwd=home / "copy"))  # into an existing folder
    assert (home / "copy" / "tree" / "a" / "b" / "deep.bin").read_bytes() == contents["a/b/deep.bin"]
    assert not list(home.rglob("*.part"))

    du = ok(agora("files", "du", home=home)).stdout
    assert "used of" in du and "%" in du

    ok(agora("files", "mkdir", "/x/y", "--parents", home=home))
    assert ok(agora("files", "mv", "/tree/top.txt", "/x", home=home)).stdout.strip() == "/x/top.txt"
    refused = agora("files", "rm", "/x", home=home)
    assert refused.returncode == 1 and refused.stderr.startswith("agora: ") and "not empty" in refused.stderr
    ok(agora("files", "rm", "-r", "/x", home=home))
    missing = agora("files", "get", "/x", home=home)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


def test_get_and_put_resume(server, session):
    home, name, password = session
    data = os.urandom(2 * 1024 * 1024)
    with Client(server.url) as client:
        client.login(name, password)
        (home / "src.bin").write_bytes(data)
        client.files.put(home / "src.bin", "/src.bin")
        # An upload interrupted after its first MiB, as the server keeps it.
        client._transport.http.put("/api/v1/files/content/half.bin", content=data[:1024 * 1024])

    (home / "dest.bin.part").write_bytes(data[:1024 * 1024])
    got = ok(agora("files", "get", "/src.bin", "dest.bin", home=home))
    assert "resuming /src.bin at 1.0 MiB" in got.stderr
    assert (home / "dest.bin").read_bytes() == data and not (home / "dest.bin.part").exists()

    sent = ok(agora("files", "put", "src.bin", "/half.bin", home=home))
    assert "resuming /half.bin at 1.0 MiB" in sent.stderr
    again = ok(agora("files", "get", "/half.bin", "check.bin", home=home))
    assert "resuming" not in again.stderr and (home / "check.bin").read_bytes() == data

    fresh = ok(agora("files", "put", "src.bin", "/half.bin", "--no-resume", home=home))
    assert "resuming" not in fresh.stderr


def test_share_and_unshare(server, session):
    home, _, _ = session
    (home / "doc.txt").write_text("shared text")
    ok(agora("files", "put", "doc.txt", "/doc.txt", home=home))
    shared = ok(agora("files", "share", "/doc.txt", "--expires", "2h", home=home))
    url = shared.stdout.strip()
    assert url.startswith(server.url + "/s/")
    assert "expires" in shared.stderr
    assert httpx.get(url).text == "shared text"

    locked = ok(agora("files", "share", "/doc.txt", "--password-stdin", home=home, input="letmein\n"))
    locked_url = locked.stdout.strip()
    assert httpx.get(locked_url).status_code == 401
    assert httpx.get(locked_url, auth=("x", "letmein")).text == "shared text"

    rows = ok(agora("files", "shares", home=home)).stdout.splitlines()
    assert len(rows) == 2 and all("/doc.txt" in row for row in rows)
    assert any("password" in row for row in rows) and any(" 1 downloads" in row for row in rows)
    first_id = [row.split()[0] for row in rows if "password" not in row][0]
    ok(agora("files", "unshare", first_id, home=home))
    assert httpx.get(url).status_code == 404
    assert "revoked" in ok(agora("files", "shares", home=home)).stdout
    bad = agora("files", "share", "/doc.txt", "--expires", "soon", home=home)
    assert bad.returncode == 2


def test_not_logged_in(tmp_path):
    result = agora("files", "ls", home=tmp_path)
    assert result.returncode == 1 and "not logged in" in result.stderr
