"""The `agora` command line, run as a subprocess against real servers and data dirs."""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agora import config as configuration
from agora.client import Client, Unauthorized

CLI_ACTOR = f"cli:{getpass.getuser()}"


def agora(*args: str, home: Path, server=None, data_dir: Path | None = None, input: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m agora ARGS` as a user whose home is ``home``.

    In a session of its own, so it has no controlling terminal: a password prompt then
    reads stdin instead of waiting on the developer's terminal.
    """
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    run_env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"))
    if server is not None:
        data_dir = server.data_dir
        if server.database_url:
            run_env["AGORA_DATABASE_URL"] = server.database_url
    if data_dir is not None:
        run_env["AGORA_DATA_DIR"] = str(data_dir)
    run_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "agora", *args], input=input, env=run_env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agora: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


# Logins expected to fail come from an address of their own, so that they never count
# towards the rate limit of 127.0.0.1, which every other test logs in from.
PROBE_ADDRESS = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


def can_login(server, name: str, password: str) -> bool:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=PROBE_ADDRESS)) as http:
        response = http.post(f"{server.url}/api/v1/tokens", json={"username": name, "password": password})
    assert response.status_code in (201, 401), response.text
    return response.status_code == 201


def unique(prefix: str = "k") -> str:
    return prefix + secrets.token_hex(5)


def credentials_file(home: Path) -> Path:
    return home / "xdg" / "agora" / "credentials.json"


# -- login, whoami, logout ------------------------------------------------------------


def test_login_whoami_logout(server, tmp_path):
    name, password = server.create_user(unique())
    result = agora("login", server.url, "--user", name, "--password-stdin", "--token-name", "cli-test",
                   home=tmp_path, input=password + "\n")
    assert result.returncode == 0, result.stderr
    assert name in result.stdout

    file = credentials_file(tmp_path)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    stored = json.loads(file.read_text())
    assert stored["url"] == server.url and stored["user"] == name and stored["verify"] is True
    with Client(server.url, stored["token"]) as client:
        assert "cli-test" in {t.name for t in client.tokens()}

    whoami = agora("whoami", home=tmp_path)
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout.strip() == f"{name} (user) at {server.url}"

    logout = agora("logout", home=tmp_path)
    assert logout.returncode == 0, logout.stderr
    assert not file.exists()
    with Client(server.url, stored["token"]) as client:
        with pytest.raises(Unauthorized):
            client.me()  # revoked on the server, not only forgotten here
    one_line_error(agora("whoami", home=tmp_path), 1, "not logged in")


def test_login_replaces_a_damaged_file_and_revokes_the_old_token(server, tmp_path):
    name, password = server.create_user(unique())
    file = credentials_file(tmp_path)
    file.parent.mkdir(parents=True)
    file.write_text("{not json")
    one_line_error(agora("whoami", home=tmp_path), 2, "damaged")
    login = lambda: agora("login", server.url, "--user", name, "--password-stdin", home=tmp_path,  # noqa: E731
                          input=password + "\n")
    assert login().returncode == 0
    first = json.loads(file.read_text())["token"]
    assert login().returncode == 0
    assert json.loads(file.read_text())["token"] != first
    with Client(server.url, first) as client:
        with pytest.raises(Unauthorized):
            client.me()  # the token the second login replaced is not left active


def test_login_wrong_password_is_one_line(server, tmp_path):
    name, _ = server.create_user(unique())
    result = agora("login", server.url, "--user", name, "--password-stdin", home=tmp_path, input="wrong-password\n")
    one_line_error(result, 1, "wrong user name or password")
    assert "Traceback" not in result.stdout + result.stderr
    assert not credentials_file(tmp_path).exists()


def test_login_over_https_needs_trust(server, tmp_path):
    name, password = server.create_user(unique())
    untrusted = agora("login", server.https_url, "--user", name, "--password-stdin", home=tmp_path,
                      input=password + "\n")
    one_line_error(untrusted, 1, "certificate", "--ca-cert")

    ca = server.data_dir / "tls" / "cert.pem"
    trusted = agora("login", server.https_url, "--user", name, "--password-stdin", "--ca-cert", str(ca),
                    home=tmp_path, input=password + "\n")
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(credentials_file(tmp_path).read_text())["verify"] == str(ca.resolve())
    assert agora("whoami", home=tmp_path).stdout.startswith(f"{name} (user)")


def test_environment_overrides_stored_credentials(server, tmp_path):
    name, password = server.create_user(unique())
    token = server.login(name, password)
    whoami = agora("whoami", home=tmp_path, env={"AGORA_URL": server.url, "AGORA_TOKEN": token})
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout.startswith(f"{name} (user)")

    custom = tmp_path / "elsewhere" / "creds.json"
    login = agora("login", server.url, "--user", name, "--password-stdin", home=tmp_path,
                  input=password + "\n", env={"AGORA_CREDENTIALS": str(custom)})
    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(custom.stat().st_mode) == 0o600
    assert not credentials_file(tmp_path).exists()
    # A stored token is never sent to another server than the one it was made for.
    other = agora("whoami", home=tmp_path, env={"AGORA_CREDENTIALS": str(custom),
                                                "AGORA_URL": "http://127.0.0.1:9"})
    one_line_error(other, 1, "not logged in")


def test_login_usage_errors(tmp_path):
    assert agora("login", "example.org", home=tmp_path).returncode == 2
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    both = agora("login", "https://127.0.0.1:1", "--insecure", "--ca-cert", str(ca), home=tmp_path)
    assert both.returncode == 2 and "exclude" in both.stderr
    unreachable = agora("login", "http://127.0.0.1:9", "--password-stdin", home=tmp_path, input="x\n")
    one_line_error(unreachable, 1, "cannot reach http://127.0.0.1:9")


# -- user administration on the data dir ----------------------------------------------


def test_user_commands_while_the_server_runs(server, tmp_path):
    name, password, new_password = unique("ku"), "first-" + secrets.token_hex(6), "second-" + secrets.token_hex(6)
    run = lambda *args, input=None: agora(*args, home=tmp_path, server=server, input=input)  # noqa: E731

    added = run("user", "add", name, "--password-stdin", "--quota", "10M", input=password + "\n")
    assert added.returncode == 0, added.stderr
    assert can_login(server, name, password)
    with server.admin() as http:
        shown = http.get(f"/api/v1/users/{name}").json()
    assert (shown["role"], shown["quota_bytes"]) == ("user", 10 * 1024**2)

    listed = run("user", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entry = {u["name"]: u for u in json.loads(listed.stdout)}[name]
    assert (entry["role"], entry["disabled"]) == ("user", False)
    table = run("user", "list")
    assert table.returncode == 0 and name in table.stdout and "10 MiB" in table.stdout

    passwd = run("user", "passwd", name, "--password-stdin", input=new_password + "\n")
    assert passwd.returncode == 0, passwd.stderr
    assert not can_login(server, name, password)
    token = server.login(name, new_password)

    disabled = run("user", "disable", name)
    assert disabled.returncode == 0, disabled.stderr
    assert not can_login(server, name, new_password)
    assert server.client(token).get("/api/v1/me").status_code == 401

    enabled = run("user", "enable", name)
    assert enabled.returncode == 0, enabled.stderr
    assert server.client(token).get("/api/v1/me").status_code == 200

    kept = run("user", "delete", name, input="n\n")
    one_line_error(kept, 1, "nothing deleted")
    assert can_login(server, name, new_password)
    deleted = run("user", "delete", name, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert not can_login(server, name, new_password)

    with server.admin() as http:
        entries = http.get("/api/v1/audit", params={"actor": CLI_ACTOR, "limit": 1000}).json()["entries"]
    audited = [e["action"] for e in reversed(entries) if e["target"] == name]
    assert audited == ["user.create", "user.password", "user.disable", "user.enable", "user.delete"]
    assert {e["protocol"] for e in entries if e["target"] == name} == {"cli"}


def test_user_refusals_are_one_line(server, tmp_path):
    name, _ = server.create_user(unique())
    duplicate = agora("user", "add", name, "--password-stdin", home=tmp_path, server=server, input="long-password\n")
    one_line_error(duplicate, 1, "already exists")
    missing = agora("user", "disable", unique("nobody"), home=tmp_path, server=server)
    one_line_error(missing, 1, "no user named")
    bad_name = agora("user", "add", "Bad Name", "--password-stdin", home=tmp_path, server=server, input="long-password\n")
    one_line_error(bad_name, 1, "user names")
    short = agora("user", "add", unique(), "--password-stdin", home=tmp_path, server=server, input="short\n")
    one_line_error(short, 1, "passwords are")
    quota = agora("user", "add", unique(), "--quota", "lots", home=tmp_path, server=server)
    assert quota.returncode == 2 and "--quota" in quota.stderr


def test_user_add_prompts_twice(server, tmp_path):
    name, password = unique(), "typed-" + secrets.token_hex(6)
    differ = agora("user", "add", name, home=tmp_path, server=server, input=f"{password}\n{password}x\n")
    assert differ.returncode == 2
    assert differ.stderr.splitlines()[-1] == "agora: the two passwords differ; nothing changed"
    same = agora("user", "add", name, "--admin", home=tmp_path, server=server, input=f"{password}\n{password}\n")
    assert same.returncode == 0, same.stderr
    with Client(server.url) as client:
        client.login(name, password)
        assert client.me().is_admin


def test_user_add_with_no_server_running(make_server, tmp_path):
    offline = make_server(start=False)  # a data dir (and database) nothing has touched yet
    first = agora("user", "add", "root", "--admin", "--password-stdin", home=tmp_path, server=offline,
                  input="root-password\n")
    assert first.returncode == 0, first.stderr
    assert "no enabled admin" not in first.stderr
    listed = agora("user", "list", "--json", home=tmp_path, server=offline)
    assert [(u["name"], u["role"]) for u in json.loads(listed.stdout)] == [("root", "admin")]
    last = agora("user", "disable", "root", home=tmp_path, server=offline)
    one_line_error(last, 1, "last enabled admin")

    offline.start()
    try:
        # The account made offline is the directory's admin; no other was generated.
        assert can_login(offline, "root", "root-password")
        with Client(offline.url) as client:
            client.login("root", "root-password")
            assert [u.name for u in client.users()] == ["root"]
    finally:
        offline.stop()


def test_user_commands_need_an_existing_data_dir(tmp_path):
    result = agora("user", "list", "--data-dir", str(tmp_path / "typo"), home=tmp_path)
    one_line_error(result, 2, "no data dir")
    assert not (tmp_path / "typo").exists()


# -- configuration ------------------------------------------------------------------


def test_config_reference_lists_every_setting(tmp_path):
    result = agora("config", "reference", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == configuration.reference_markdown()
    for setting in configuration.SETTINGS:
        assert f"`{setting.key}`" in result.stdout and setting.env in result.stdout


def test_config_check_shows_sources_and_hides_secrets(tmp_path):
    toml = tmp_path / "agora.toml"
    toml.write_text('[identity]\nlogin_backoff_max = "1h"\n')
    result = agora("config", "check", "--config", str(toml), "--http-port", "1234", home=tmp_path,
                   env={"AGORA_ADMIN_PASSWORD": "very-secret-value",
                        "AGORA_DATABASE_URL": "postgresql://agora:db-secret@db.example/agora"})
    assert result.returncode == 0, result.stderr
    rows = {key: rest for key, *rest in (re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines())}
    assert set(rows) == {s.key for s in configuration.SETTINGS}
    assert rows["http.port"] == ["1234", "flag --http-port"]
    assert rows["identity.login_backoff_max"] == ["3600", f"file {toml}"]
    assert rows["https.port"] == ["8443", "default"]
    assert rows["admin.password"] == ["(hidden)", "env AGORA_ADMIN_PASSWORD"]
    assert "very-secret-value" not in result.stdout + result.stderr
    assert "db-secret" not in result.stdout and "db.example" in rows["database.url"][0]


def test_bad_settings_exit_2_with_one_line(tmp_path):
    check = agora("config", "check", "--http-port", "99999", home=tmp_path)
    one_line_error(check, 2, "bad setting: http.port")
    serve = agora("serve", "--data-dir", str(tmp_path / "d"), "--https-port", "nope", home=tmp_path)
    one_line_error(serve, 2, "bad setting: https.port")
