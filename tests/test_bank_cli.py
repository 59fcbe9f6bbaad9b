"""`agora bank ...` as a subprocess against a real server, logged in with `agora login`:
currencies and issuing (admins), open, accounts, transfer with exact decimal amounts and
an id that makes a rerun harmless, pending post/void, statement (table and CSV), close,
check; the denials: debiting someone else's account, admin commands as a user."""

from __future__ import annotations

import csv
import io
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agora.client import Client


def agora(*args: str, home: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "agora", *args], input=input, env=env, cwd=home,
                          capture_output=True, text=True, timeout=120, start_new_session=True)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def refused(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("agora: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def logged_in(server, tmp_path: Path, label: str, name: str | None = None,
              password: str | None = None) -> tuple[Path, str]:
    if name is None:
        name, password = server.create_user()
    home = tmp_path / label
    home.mkdir()
    ok(agora("login", server.url, "--user", name, "--password-stdin", home=home, input=f"{password}\n"))
    return home, name


def opened(result: subprocess.CompletedProcess[str]) -> str:
    match = re.match(r"opened (\S+) \(", ok(result).stdout)
    assert match, result.stdout
    return match.group(1)


def row_of(listing: str, number: str) -> list[str]:
    for line in listing.splitlines():
        if line.strip().startswith(number):
            return line.split()
    raise AssertionError(f"{number} not in\n{listing}")


def test_bank_commands(server, backend, tmp_path):
    if backend != "sqlite":
        # Some forty CLI runs of a second each: once is enough, the CLI speaks only HTTP.
        # The same operations run on PostgreSQL in test_bank_client and test_bank_pages.
        pytest.skip("the CLI round trip runs on SQLite only; its API calls are covered on PostgreSQL by "
                    "test_bank_client")
    admin, _ = logged_in(server, tmp_path, "admin", "admin", server.admin_password)
    alice, _ = logged_in(server, tmp_path, "alice")
    bob, _ = logged_in(server, tmp_path, "bob")
    for code, exponent in (("EUR", "2"), ("JPY", "0")):
        assert ok(agora("bank", "currency", "add", code, "--exponent", exponent, home=admin)).stdout == \
            f"added {code} (exponent {exponent})\n"
    assert "EUR  exponent 2" in ok(agora("bank", "currency", "ls", home=alice)).stdout

    mine = opened(agora("bank", "open", "--currency", "eur", "--name", "main", home=alice))
    theirs = opened(agora("bank", "open", "--currency", "EUR", home=bob))
    yen = opened(agora("bank", "open", "--currency", "JPY", home=alice))
    assert re.fullmatch(r"issued 100\.00 EUR to \S+: \S+\n", ok(agora("bank", "issue", mine, "100", home=admin)).stdout)
    ok(agora("bank", "issue", yen, "5000", home=admin))

    assert row_of(ok(agora("bank", "accounts", home=alice)).stdout, mine)[1:5] == ["main", "EUR", "100.00", "100.00"]
    assert row_of(ok(agora("bank", "accounts", home=alice)).stdout, yen)[1:5] == ["JPY", "JPY", "5000", "5000"]

    transfer_id = str(uuid.uuid4())
    sent = ok(agora("bank", "transfer", mine, theirs, "12.5", "--memo", "lunch", "--id", transfer_id, home=alice))
    assert sent.stdout == f"transferred 12.50 EUR from {mine} to {theirs}: {transfer_id}\n"
    rerun = ok(agora("bank", "transfer", mine, theirs, "12.5", "--memo", "lunch", "--id", transfer_id, home=alice))
    assert "already done earlier under this id; nothing changed" in rerun.stdout
    assert row_of(ok(agora("bank", "accounts", home=alice)).stdout, mine)[3] == "87.50"
    assert "exists with other contents" in refused(agora("bank", "transfer", mine, theirs, "1", "--id", transfer_id,
                                                         home=alice))

    # Amounts are exact: a third decimal for EUR, or any for JPY, is refused before sending.
    assert "decimals" in refused(agora("bank", "transfer", mine, theirs, "0.001", home=alice), 2)
    assert "no decimals" in refused(agora("bank", "transfer", yen, mine, "1.5", home=alice), 2)
    assert "not an amount" in refused(agora("bank", "transfer", mine, theirs, "1e3", home=alice), 2)
    assert "available" in refused(agora("bank", "transfer", mine, theirs, "1000", home=alice))

    held = ok(agora("bank", "transfer", mine, theirs, "7.50", "--pending", "--timeout", "600", home=alice)).stdout
    hold_id = re.match(r"reserved 7\.50 EUR from \S+ to \S+: (\S+)\n", held).group(1)
    assert row_of(ok(agora("bank", "accounts", home=alice)).stdout, mine)[3:5] == ["87.50", "80.00"]
    assert ok(agora("bank", "post", hold_id, "--amount", "5", home=alice)).stdout == f"posted {hold_id}: 5.00 EUR\n"
    assert row_of(ok(agora("bank", "accounts", home=alice)).stdout, mine)[3:5] == ["82.50", "82.50"]
    second = ok(agora("bank", "transfer", mine, theirs, "1", "--pending", home=alice)).stdout.split()[-1]
    assert ok(agora("bank", "void", second, home=bob)).stdout == f"voided {second}\n"  # either party may void
    refused(agora("bank", "post", second, home=alice))

    statement = ok(agora("bank", "statement", mine, home=alice))
    lines = [line for line in statement.stdout.splitlines()[1:] if line.strip()]
    assert len(lines) == 6  # issue, transfer, pending, post, pending, void
    assert "lunch" in lines[1] and lines[1].split()[-2:] == ["-12.50", "87.50"]
    assert "82.50 EUR" in statement.stderr
    rows = list(csv.DictReader(io.StringIO(ok(agora("bank", "statement", mine, "--csv", home=alice)).stdout)))
    assert [row["kind"] for row in rows] == ["issue", "transfer", "pending", "post", "pending", "void"]
    assert rows[1]["id"] == transfer_id and rows[1]["amount"] == "-1250"
    assert ok(agora("bank", "statement", mine, "--from", "2999-01-01", home=alice)).stderr.startswith("0 transfers")

    spare = opened(agora("bank", "open", "--currency", "EUR", home=alice))
    assert ok(agora("bank", "close", spare, home=alice)).stdout == f"closed {spare}\n"
    assert "move the money out" in refused(agora("bank", "close", mine, home=alice))

    assert ok(agora("bank", "check", home=admin)).stdout == "ledger ok\n"
    assert "admin" in refused(agora("bank", "check", home=alice))


def test_a_user_cannot_debit_another_users_account(server, tmp_path):
    admin, _ = logged_in(server, tmp_path, "admin", "admin", server.admin_password)
    alice, _ = logged_in(server, tmp_path, "alice")
    mallory, mallory_name = logged_in(server, tmp_path, "mallory")
    agora("bank", "currency", "add", "EUR", "--exponent", "2", home=admin)
    victim = opened(agora("bank", "open", "--currency", "EUR", home=alice))
    own = opened(agora("bank", "open", "--currency", "EUR", home=mallory))
    ok(agora("bank", "issue", victim, "50", home=admin))

    message = refused(agora("bank", "transfer", victim, own, "10", home=mallory))
    assert "not yours" in message
    refused(agora("bank", "transfer", victim, own, "10", "--currency", "EUR", home=mallory))
    refused(agora("bank", "statement", victim, home=mallory))
    refused(agora("bank", "statement", victim, "--csv", home=mallory))
    assert "admin" in refused(agora("bank", "issue", own, "10", home=mallory))
    assert "admin" in refused(agora("bank", "currency", "add", "XAU", "--exponent", "3", home=mallory))
    with Client(server.url, server.admin_token) as client:
        assert client.bank.account(victim).posted == 50_00 and client.bank.account(own).posted == 0


def test_check_exits_non_zero_when_the_ledger_is_wrong(make_server, backend, tmp_path):
    if backend != "sqlite":
        pytest.skip("the CLI side of the check runs on SQLite only; test_bank_ledger tampers on both backends")
    server = make_server()  # its own: the ledger is tampered with below
    admin, _ = logged_in(server, tmp_path, "admin", "admin", server.admin_password)
    ok(agora("bank", "currency", "add", "EUR", "--exponent", "2", home=admin))
    number = opened(agora("bank", "open", "--currency", "EUR", home=admin))
    ok(agora("bank", "issue", number, "10", home=admin))
    assert ok(agora("bank", "check", home=admin)).stdout == "ledger ok\n"

    # Money out of nowhere: a balance raised without a transfer, straight in the database.
    with sqlite3.connect(server.data_dir / "agora.db") as db:
        db.execute("UPDATE bank_accounts SET posted = posted + 5 WHERE number = ?", (number,))
    result = agora("bank", "check", home=admin)
    assert result.returncode == 1, (result.stdout, result.stderr)
    problems = result.stdout.splitlines()
    assert problems and all(line.startswith("problem: ") for line in problems)
    assert any(number in line for line in problems)
    assert result.stderr == f"agora: {len(problems)} problem(s) found in the ledger\n"
