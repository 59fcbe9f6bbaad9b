"""`agora mail ...` as a subprocess against a real server, logged in with `agora login`:
send (body from a flag or stdin, attachments), ls, read (and --raw), attachment, mv,
rm, folders, alias for admins."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from agora.client import Client


def agora(*args: str, home: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "agora", *args], input=input, env=env, cwd=home,
                          capture_output=True, text=True, timeout=120, start_new_session=True)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("agora: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def logged_in(server, tmp_path: Path, label: str, name: str | None = None,
              password: str | None = None) -> tuple[Path, str, str]:
    if name is None:
        name, password = server.create_user()
    home = tmp_path / label
    home.mkdir()
    ok(agora("login", server.url, "--user", name, "--password-stdin", home=home, input=f"{password}\n"))
    return home, name, password


def rows(listing: str) -> list[tuple[int, str, str]]:
    """(ID, flag letters, rest of the line) of each message row of `agora mail ls`."""
    found = []
    for line in listing.splitlines():
        match = re.match(r"\s*(\d+)  (.{4})  (.*)$", line)
        if match:
            found.append((int(match.group(1)), match.group(2), match.group(3)))
    return found


def test_send_ls_read_round_trip(server, tmp_path):
    alice_home, alice, _ = logged_in(server, tmp_path, "alice")
    bob_home, bob, bob_password = logged_in(server, tmp_path, "bob")
    attachment = alice_home / "photo.jpg"
    attachment.write_bytes(os.urandom(50_000))

    sent = ok(agora("mail", "send", "--to", f"{bob}@localhost", "--subject", "Lunch?", "--body",
                    "Noon at the usual place.", "--attach", "photo.jpg", home=alice_home))
    assert f"delivered to {bob}@localhost" in sent.stdout and sent.stdout.startswith("sent <")
    # The body from stdin, two recipients (Alice has a copy too).
    ok(agora("mail", "send", "--to", f"{bob}@localhost", "--to", f"{alice}@localhost", "-s", "From stdin",
             home=alice_home, input="line one\nline two\n"))

    listing = ok(agora("mail", "ls", home=bob_home))
    table = rows(listing.stdout)
    assert [row[2] for row in table][0].find("From stdin") > 0 and "Lunch?" in table[1][2]
    assert table[0][1].startswith("N") and table[1][1] == "N  +"  # unread; the second has a file
    assert f"{alice}@localhost" in table[1][2]
    assert "2 of 2 in INBOX" in listing.stderr
    stdin_uid, lunch_uid = table[0][0], table[1][0]

    read = ok(agora("mail", "read", str(lunch_uid), home=bob_home)).stdout
    assert f"From: {alice}@localhost" in read and f"To: {bob}@localhost" in read and "Subject: Lunch?" in read
    assert "Noon at the usual place." in read
    assert re.search(r"\[0\] photo\.jpg \(image/jpeg, 48\.8 KiB\)", read)
    table = rows(ok(agora("mail", "ls", "--limit", "5", home=bob_home)).stdout)
    assert table[1][1] == "   +" and table[0][1].startswith("N")  # reading marked it seen

    assert "line one\nline two" in ok(agora("mail", "read", str(stdin_uid), home=bob_home)).stdout
    raw = subprocess.run([sys.executable, "-m", "agora", "mail", "read", "--raw", str(lunch_uid)],
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("AGORA_")},
                              "HOME": str(bob_home), "XDG_CONFIG_HOME": str(bob_home / "xdg")},
                         capture_output=True, timeout=120)
    assert raw.returncode == 0, raw.stderr
    with Client(server.url) as client:
        client.login(bob, bob_password)
        assert raw.stdout == client.mail.raw("INBOX", lunch_uid)

    ok(agora("mail", "attachment", str(lunch_uid), "0", home=bob_home))
    assert hashlib.sha256((bob_home / "photo.jpg").read_bytes()).digest() == \
        hashlib.sha256(attachment.read_bytes()).digest()
    ok(agora("mail", "attachment", str(lunch_uid), "0", "-o", "copy.jpg", home=bob_home))
    assert (bob_home / "copy.jpg").read_bytes() == attachment.read_bytes()

    ok(agora("mail", "mkdir", "Food", home=bob_home))
    moved = ok(agora("mail", "mv", str(lunch_uid), "Food", home=bob_home)).stdout
    food_uid = int(re.fullmatch(r"moved to Food as (\d+)\n", moved).group(1))
    assert "Lunch?" in ok(agora("mail", "ls", "Food", home=bob_home)).stdout
    assert "Lunch?" not in ok(agora("mail", "ls", home=bob_home)).stdout
    folders = ok(agora("mail", "folders", home=bob_home)).stdout
    assert re.search(r"INBOX\s+1\s", folders) and re.search(r"Food\s+1\s", folders)

    trashed = ok(agora("mail", "rm", str(food_uid), "--folder", "Food", home=bob_home)).stdout
    trash_uid = int(re.fullmatch(r"moved to Trash as (\d+)\n", trashed).group(1))
    assert ok(agora("mail", "rm", str(trash_uid), "-f", "Trash", home=bob_home)).stdout == "deleted\n"
    assert "no messages in Food" in ok(agora("mail", "ls", "Food", home=bob_home)).stdout
    ok(agora("mail", "rmdir", "Food", home=bob_home))

    assert "no message" in refused(agora("mail", "read", "999", home=bob_home))
    assert "folder" in refused(agora("mail", "ls", "Nowhere", home=bob_home))
    refused(agora("mail", "send", "--to", f"nobody-{secrets.token_hex(3)}@localhost", "--body", "x",
                  home=alice_home))
    usage = agora("mail", "send", "--body", "x", home=alice_home)
    assert usage.returncode == 2 and "--to" in usage.stderr


def test_aliases_need_an_admin(server, tmp_path):
    user_home, user, _ = logged_in(server, tmp_path, "user")
    admin_home, _, _ = logged_in(server, tmp_path, "admin", "admin", server.admin_password)
    alias = f"desk-{secrets.token_hex(3)}@localhost"
    assert "admin" in refused(agora("mail", "alias", "add", alias, user, home=user_home))
    refused(agora("mail", "alias", "ls", home=user_home))

    assert ok(agora("mail", "alias", "add", alias, user, home=admin_home)).stdout == f"{alias}  ->  {user}\n"
    assert f"{alias}  ->  {user}" in ok(agora("mail", "alias", "ls", home=admin_home)).stdout
    ok(agora("mail", "send", "--to", alias, "-s", "via alias", "--body", "hi", home=admin_home))
    assert "via alias" in ok(agora("mail", "ls", home=user_home)).stdout
    ok(agora("mail", "alias", "rm", alias, home=admin_home))
    assert alias not in ok(agora("mail", "alias", "ls", home=admin_home)).stdout
    refused(agora("mail", "alias", "rm", alias, home=admin_home))


@pytest.mark.parametrize("command", [("ls",), ("folders",), ("read", "1"), ("send", "--to", "a@localhost", "--body", "x")])
def test_needs_a_login(tmp_path, command):
    home = tmp_path / "nobody"
    home.mkdir()
    assert "not logged in" in refused(agora("mail", *command, home=home))
