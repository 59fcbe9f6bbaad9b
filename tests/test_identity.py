"""The identity domain in-process, on a real database of each backend: expiry, sessions,
the append-only audit log, hash upgrades."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from agora import config as configuration
from agora.core.errors import AuthenticationFailed, Conflict, EncryptionRequired, InvalidInput
from agora.core.identity import ClientInfo, validate_name
from agora.core.runtime import Runtime
from agora.core.tables import utcnow
from conftest import create_pg_database, drop_pg_database

LOCAL = ClientInfo("127.0.0.1", "test")


@pytest.fixture
def runtime_factory(tmp_path, backend):
    urls: list[str] = []

    def make(**flags: str):
        values = {"data_dir": str(tmp_path / "data"), **flags}
        if backend == "postgresql":
            if not urls:  # one database per test, however many runtimes open it
                urls.append(create_pg_database())
            values["database.url"] = urls[0]
        return configuration.load(values, environ={})

    yield make
    for url in urls:
        drop_pg_database(url)


def run(coro):
    return asyncio.run(coro)


def test_expired_token_stops_working(runtime_factory):
    async def scenario():
        runtime = await Runtime.open(runtime_factory())
        try:
            user = await runtime.identity.create_user("erin", "password-123")
            _, secret = await runtime.identity.create_token(user, "short", expires_at=utcnow() + timedelta(seconds=1))
            assert (await runtime.identity.user_for_token(secret)).name == "erin"
            await asyncio.sleep(1.2)
            assert await runtime.identity.user_for_token(secret) is None
            with pytest.raises(InvalidInput):
                await runtime.identity.create_token(user, "past", expires_at=utcnow() - timedelta(seconds=1))
        finally:
            await runtime.close()

    run(scenario())


def test_sessions_expire_and_end(runtime_factory):
    async def scenario():
        runtime = await Runtime.open(runtime_factory(**{"identity.session_lifetime": "1s"}))
        try:
            user = await runtime.identity.create_user("frank", "password-123")
            secret, session = await runtime.identity.create_session(user, LOCAL)
            assert (await runtime.identity.session(secret)).csrf_token == session.csrf_token
            await asyncio.sleep(1.2)
            assert await runtime.identity.session(secret) is None
            secret, _ = await runtime.identity.create_session(user, LOCAL)
            await runtime.identity.end_session(secret)
            assert await runtime.identity.session(secret) is None
            # A password change ends every web login of that user.
            secret, _ = await runtime.identity.create_session(user, LOCAL)
            await runtime.identity.update_user("frank", password="password-456")
            assert await runtime.identity.session(secret) is None
        finally:
            await runtime.close()

    run(scenario())


def test_audit_log_is_append_only(runtime_factory):
    async def scenario():
        runtime = await Runtime.open(runtime_factory())
        try:
            await runtime.audit.record("test.event", actor="someone")
            for statement in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log"):
                with pytest.raises(Exception, match="append-only"):
                    async with runtime.db.write() as conn:
                        await conn.execute(text(statement))
            entries = await runtime.audit.entries(action="test.event")
            assert [e.actor for e in entries] == ["someone"]
        finally:
            await runtime.close()

    run(scenario())


def test_plaintext_passwords_refused_from_remote_without_tls(runtime_factory):
    async def scenario():
        runtime = await Runtime.open(runtime_factory())
        try:
            await runtime.identity.create_user("gina", "password-123")
            with pytest.raises(EncryptionRequired):
                await runtime.identity.authenticate("gina", "password-123", ClientInfo("192.0.2.1", "test"))
            user = await runtime.identity.authenticate("gina", "password-123", ClientInfo("192.0.2.1", "test", secure=True))
            assert user.name == "gina"
            assert (await runtime.identity.authenticate("gina", "password-123", ClientInfo("::1", "test"))).name == "gina"
        finally:
            await runtime.close()

    run(scenario())


def test_weak_hash_is_upgraded_on_login(runtime_factory):
    async def scenario():
        weak = await Runtime.open(runtime_factory(**{"identity.argon2_time_cost": "1",
                                                     "identity.argon2_memory_kib": "1024"}))
        await weak.identity.create_user("hank", "password-123")
        await weak.close()
        strong = await Runtime.open(runtime_factory())
        try:
            async with strong.db.read() as conn:
                before = (await conn.execute(text("SELECT password_hash FROM users WHERE name='hank'"))).scalar_one()
            assert "m=1024" in before
            await strong.identity.authenticate("hank", "password-123", LOCAL)
            async with strong.db.read() as conn:
                after = (await conn.execute(text("SELECT password_hash FROM users WHERE name='hank'"))).scalar_one()
            assert "m=65536" in after and after.startswith("$argon2id$")
            with pytest.raises(AuthenticationFailed):
                await strong.identity.authenticate("hank", "wrong-password", LOCAL)
        finally:
            await strong.close()

    run(scenario())


@pytest.mark.parametrize("password, prepared", [
    # RFC 4013's examples, and what people type
    ("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"), ("\u2168", "IX"),
    ("pass\u00a0word", "pass word"), ("\ufb01le", "file"), ("pässwörd", "pässwörd"),
    # refused by SASLprep: used as they are, as PostgreSQL and libpq do
    ("\u0007bell", "\u0007bell"), ("\u0627\u0031", "\u0627\u0031"), ("\u00ad", "\u00ad"),
])
def test_saslprep(password, prepared):
    from agora.core.scram import saslprep
    assert saslprep(password) == prepared


def test_scram_verifiers_made_before_saslprep_are_remade_at_login(runtime_factory):
    from agora.core.scram import decode_verifier, encode_verifier, make_verifier, saslprep

    password = "n\u00f6-break\u00a0space \ufb01ne"

    async def scenario():
        runtime = await Runtime.open(runtime_factory())
        try:
            await runtime.identity.create_user("ines", password)
            async with runtime.db.write() as conn:
                made = decode_verifier((await conn.execute(text(
                    "SELECT scram_verifier FROM users WHERE name='ines'"))).scalar_one())
                assert made == make_verifier(saslprep(password), made.iterations, made.salt)
                # as an older Agora stored it: the UTF-8 of the password unprepared
                old = encode_verifier(make_verifier("\ufb01" + password, made.iterations, made.salt))
                await conn.execute(text("UPDATE users SET scram_verifier = :v WHERE name='ines'"), {"v": old})
            await runtime.identity.authenticate("ines", password, LOCAL)
            async with runtime.db.read() as conn:
                remade = decode_verifier((await conn.execute(text(
                    "SELECT scram_verifier FROM users WHERE name='ines'"))).scalar_one())
            assert remade == make_verifier(password, remade.iterations, remade.salt)
        finally:
            await runtime.close()

    run(scenario())


def test_duplicate_user_is_a_conflict(runtime_factory):
    async def scenario():
        runtime = await Runtime.open(runtime_factory())
        try:
            await runtime.identity.create_user("ivan", "password-123")
            with pytest.raises(Conflict):
                await runtime.identity.create_user("ivan", "password-456")
        finally:
            await runtime.close()

    run(scenario())


@pytest.mark.parametrize("name", ["a", "bob", "john.doe", "x_y-z9", "a" * 32])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Bob", "9lives", ".hidden", "a..b", "trailing.", "a/b", "a b",
                                  "a" * 33, "ünï", "a\x00b", "../etc"])
def test_invalid_names(name):
    with pytest.raises(InvalidInput):
        validate_name(name)


def test_scram_verifiers_use_the_configured_iterations_and_old_ones_keep_working(runtime_factory):
    import base64
    import hashlib
    import hmac

    from agora.core.scram import decode_verifier, encode_verifier, make_verifier
    from agora.sql.pgwire.scram import MECHANISM, ScramServer

    def scram_login(verifier, password: str) -> bool:
        """The client's side of SCRAM-SHA-256 (RFC 5802), against our server's."""
        server = ScramServer(verifier)
        bare = "n=,r=clientnonce123"
        server_first = server.client_first(MECHANISM, f"n,,{bare}".encode()).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={fields['r']}"
        signature = hmac.new(hashlib.sha256(client_key).digest(),
                             f"{bare},{server_first},{without_proof}".encode(), hashlib.sha256).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        return server.client_final(f"{without_proof},p={proof}".encode())[0]

    async def scenario():
        runtime = await Runtime.open(runtime_factory(**{"identity.scram_iterations": "20000"}))
        try:
            identity = runtime.identity
            await identity.create_user("sam", "password-123")
            made = await identity.scram_verifier("sam", LOCAL)
            assert made.iterations == 20000 and scram_login(made, "password-123")
            # One made at PostgreSQL's old count still logs in, and is remade at the
            # configured one when the password is next given.
            async with runtime.db.write() as conn:
                await conn.execute(text("UPDATE users SET scram_verifier = :v WHERE name = 'sam'"),
                                   {"v": encode_verifier(make_verifier("password-123", 4096))})
            old = await identity.scram_verifier("sam", LOCAL)
            assert old.iterations == 4096 and scram_login(old, "password-123")
            assert not scram_login(old, "password-124")
            await identity.authenticate("sam", "password-123", LOCAL)
            async with runtime.db.read() as conn:
                stored = (await conn.execute(text("SELECT scram_verifier FROM users WHERE name='sam'"))).scalar_one()
            assert decode_verifier(stored).iterations == 20000
        finally:
            await runtime.close()

    run(scenario())
