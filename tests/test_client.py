"""agora.client (sync and async) against a real server, on both backends."""

from __future__ import annotations

import asyncio
import secrets
import socket
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from agora.client import (AgoraError, AsyncClient, AuditPage, Client, Conflict, ConnectionFailed, Forbidden,
                          InvalidRequest, NewToken, NotFound, RateLimited, Token, Unauthorized, User)


def unique(prefix: str = "c") -> str:
    return prefix + secrets.token_hex(5)


def assert_problem(error: AgoraError, status: int) -> None:
    """The exception carries the server's RFC 9457 document, not just a status."""
    assert error.status == status
    assert error.problem["status"] == status
    assert error.problem["title"] == error.title
    assert error.type.startswith("urn:agora:problem:") or error.type == "about:blank"
    assert error.detail and error.detail == error.problem["detail"]
    assert str(error) == error.detail


@pytest.fixture
def admin(server) -> Client:
    with Client(server.url) as client:
        client.login("admin", server.admin_password, name="test-client-admin")
        yield client


@pytest.fixture
def account(server) -> tuple[str, str]:
    return server.create_user(unique("cu"))


def test_login_me_tokens_and_revoke(server, account):
    name, password = account
    with Client(server.url) as client:
        assert client.token is None
        new = client.login(name, password, name="laptop", expires_in=timedelta(hours=1))
        assert isinstance(new, NewToken)
        assert new.token.startswith("agora_") and client.token == new.token
        assert new.token not in repr(new)  # the secret stays out of logs
        assert new.name == "laptop" and not new.revoked
        assert new.expires_at is not None and new.expires_at.tzinfo is not None
        assert timedelta(minutes=59) < new.expires_at - datetime.now(timezone.utc) <= timedelta(hours=1)

        me = client.me()
        assert isinstance(me, User)
        assert (me.name, me.role, me.disabled, me.is_admin) == (name, "user", False, False)
        assert isinstance(me.created_at, datetime) and me.created_at.tzinfo is not None

        other = client.login(name, password, name="second")
        listed = {t.id: t for t in client.tokens()}
        assert {new.id, other.id} <= set(listed)
        assert all(isinstance(t, Token) for t in listed.values())
        assert listed[new.id].name == "laptop"

        client.revoke_token(new.id)
        assert {t.id: t for t in client.tokens()}[new.id].revoked
        with pytest.raises(NotFound) as missing:
            client.revoke_token("0000000000000000")
        assert_problem(missing.value, 404)

    with Client(server.url, token=new.token) as revoked:
        with pytest.raises(Unauthorized) as refused:
            revoked.me()
    assert_problem(refused.value, 401)
    assert refused.value.type == "urn:agora:problem:unauthenticated"


def test_wrong_password_and_no_token(server, account):
    name, _ = account
    with Client(server.url) as client:
        with pytest.raises(Unauthorized) as wrong:
            client.login(name, "not-the-password")
        assert_problem(wrong.value, 401)
        assert client.token is None
        with pytest.raises(Unauthorized):
            client.me()


def test_change_password(server, account):
    name, password = account
    with Client(server.url) as client:
        client.login(name, password)
        with pytest.raises(Forbidden) as wrong:
            client.change_password("wrong-current", "a-new-password")
        assert_problem(wrong.value, 403)
        with pytest.raises(InvalidRequest) as short:
            client.change_password(password, "short")
        assert_problem(short.value, 422)
        client.change_password(password, "a-new-password")
    with Client(server.url) as client:
        with pytest.raises(Unauthorized):
            client.login(name, password)
        assert client.login(name, "a-new-password").token


def test_admin_user_crud(admin):
    name = unique("cadm")
    created = admin.create_user(name, "password-" + name, quota_bytes=5 * 1024**2)
    assert (created.name, created.role, created.quota_bytes, created.disabled) == (name, "user", 5 * 1024**2, False)
    assert admin.user(name) == created
    assert name in {u.name for u in admin.users()}

    with pytest.raises(Conflict) as duplicate:
        admin.create_user(name, "password-" + name)
    assert_problem(duplicate.value, 409)
    assert name in duplicate.value.detail

    disabled = admin.update_user(name, disabled=True)
    assert disabled.disabled and disabled.updated_at >= created.updated_at
    promoted = admin.update_user(name, role="admin", disabled=False, quota_bytes=0)
    assert (promoted.role, promoted.disabled, promoted.quota_bytes) == ("admin", False, 0)
    admin.update_user(name, password="changed-" + name)
    with Client(admin.base_url) as client:
        assert client.login(name, "changed-" + name).token

    admin.delete_user(name)
    with pytest.raises(NotFound) as gone:
        admin.user(name)
    assert_problem(gone.value, 404)
    with pytest.raises(NotFound):
        admin.delete_user(name)
    with pytest.raises(NotFound):
        admin.update_user(name, disabled=True)


def test_invalid_input_carries_details(admin):
    with pytest.raises(InvalidRequest) as bad_name:
        admin.create_user("Not A Name", "long-enough-password")
    assert_problem(bad_name.value, 422)
    with pytest.raises(InvalidRequest) as bad_role:
        admin.create_user(unique(), "long-enough-password", role="emperor")
    assert_problem(bad_role.value, 422)
    # Validation failures say where, in the problem's `errors` extension member.
    assert any("role" in item["loc"] for item in bad_role.value.problem["errors"])


def test_audit_log_pages(admin):
    name = unique("caud")
    admin.create_user(name, "password-" + name)
    admin.update_user(name, disabled=True)
    page = admin.audit(limit=50, actor="admin")
    assert isinstance(page, AuditPage)
    actions = {(e.action, e.target) for e in page.entries}
    assert ("user.create", name) in actions and ("user.disable", name) in actions
    assert all(e.actor == "admin" and e.at.tzinfo is not None for e in page.entries)

    created = admin.audit(action="user.create", limit=1)
    assert [e.action for e in created.entries] == ["user.create"]
    assert created.next == created.entries[0].id
    older = admin.audit(action="user.create", limit=1, before=created.next)
    assert all(e.id < created.next for e in older.entries)


def test_normal_user_is_forbidden_admin_calls(server, account):
    name, password = account
    with Client(server.url) as client:
        client.login(name, password)
        calls = [client.users, lambda: client.user("admin"), lambda: client.create_user(unique(), "pw-long-enough"),
                 lambda: client.update_user(name, role="admin"), lambda: client.delete_user("admin"),
                 client.audit]
        for call in calls:
            with pytest.raises(Forbidden) as refused:
                call()
            assert_problem(refused.value, 403)
        assert client.me().role == "user"


def test_rate_limited_has_retry_after(server, account):
    name, _ = account
    # An address of its own, so that this flood slows nobody else's logins down.
    address = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    transport = httpx.HTTPTransport(local_address=address)
    with Client(server.url, transport=transport) as client:
        for _ in range(30):
            try:
                client.login(name, "wrong-password")
            except Unauthorized:
                continue
            except RateLimited as error:
                limited = error
                break
        else:
            pytest.fail("30 wrong passwords were never rate-limited")
    assert_problem(limited, 429)
    assert limited.retry_after is not None and limited.retry_after >= 1


def test_health_and_https(server):
    with Client(server.url) as client:
        health = client.health()
    assert health.ok and health.checks == {"database": "ok"} and health.version
    with Client(server.https_url, verify=server.data_dir / "tls" / "cert.pem") as client:
        assert client.health().ok
    with Client(server.https_url) as client:
        with pytest.raises(ConnectionFailed) as untrusted:
            client.health()
    assert "certificate" in untrusted.value.message and untrusted.value.status is None
    with Client(server.https_url, verify=False) as client:
        assert client.health().ok


def test_connection_failed():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with Client(f"http://127.0.0.1:{port}", timeout=5) as client:
            with pytest.raises(ConnectionFailed) as refused:
                client.health()
    assert isinstance(refused.value, AgoraError)
    assert f"127.0.0.1:{port}" in refused.value.message


def test_base_url_must_be_http():
    with pytest.raises(ValueError):
        Client("ftp://127.0.0.1")


def test_async_client(server, account):
    name, password = account

    async def scenario() -> None:
        async with AsyncClient(server.url) as client:
            new = await client.login(name, password, name="async")
            me = await client.me()
            assert (me.name, me.role) == (name, "user")
            assert new.id in {t.id for t in await client.tokens()}
            with pytest.raises(Forbidden) as forbidden:
                await client.users()
            assert_problem(forbidden.value, 403)
            assert (await client.health()).ok
            await client.revoke_token(new.id)
            with pytest.raises(Unauthorized) as revoked:
                await client.me()
            assert_problem(revoked.value, 401)

        async with AsyncClient(server.url) as admin:
            await admin.login("admin", server.admin_password)
            other = unique("ca")
            created = await admin.create_user(other, "password-" + other, role="admin")
            assert created.is_admin
            with pytest.raises(Conflict) as duplicate:
                await admin.create_user(other, "password-" + other)
            assert_problem(duplicate.value, 409)
            assert (await admin.update_user(other, role="user")).role == "user"
            assert (await admin.user(other)).name == other
            assert other in {u.name for u in await admin.users()}
            assert (await admin.audit(action="user.create", actor="admin", limit=10)).entries
            await admin.delete_user(other)
            with pytest.raises(NotFound) as gone:
                await admin.user(other)
            assert_problem(gone.value, 404)

        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.{secrets.randbelow(250) + 2}.{secrets.randbelow(250) + 2}")
        async with AsyncClient(server.url, transport=transport) as client:
            with pytest.raises(Unauthorized):
                await client.login(name, "wrong-password")

    asyncio.run(scenario())


def test_errors_survive_pickling(server):
    import pickle

    with Client(server.url) as client:
        with pytest.raises(Unauthorized) as refused:
            client.me()
    copy = pickle.loads(pickle.dumps(refused.value))
    assert type(copy) is Unauthorized
    assert (copy.status, copy.detail, copy.problem, str(copy)) == (401, refused.value.detail, refused.value.problem,
                                                                   str(refused.value))
