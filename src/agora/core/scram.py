"""SCRAM-SHA-256 verifiers (RFC 5802/7677): what a server keeps to check a SCRAM login
without knowing the password. Made by core.identity whenever it has the password in hand
(password set or changed, a successful login by any protocol); used by the PostgreSQL
wire protocol's SCRAM exchange (sql/pgwire/scram.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

# The default of identity.scram_iterations. PostgreSQL's own default is 4096 (about 3 ms
# of PBKDF2-SHA256): a stolen verifier then costs an offline guesser little next to our
# argon2id hashes. Every login costs the client (libpq, psycopg, asyncpg, JDBC) these
# iterations once (32768: ~25 ms of CPU in libpq, whose PBKDF2 is about twice as slow as
# OpenSSL's, ~11 ms in asyncpg), and the server only when it makes a verifier. Verifiers keep the
# count they were made with, so changing it never breaks a login.
ITERATIONS = 32768


@dataclass(frozen=True)
class Verifier:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


_PROHIBITED = (stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
               stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
               stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1)


def saslprep(password: str) -> str:
    """A password as SCRAM hashes it: SASLprep (RFC 4013), which libpq applies on the
    client's side and PostgreSQL when it makes a verifier. Like both of them, a password
    SASLprep refuses (prohibited or unassigned code points, mixed directions) is used as
    it is."""
    if password.isascii():
        return password  # nothing in ASCII is mapped or normalized; refused is as is
    # Non-ASCII spaces become spaces, "commonly mapped to nothing" goes; then NFKC.
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c))
    prepared = unicodedata.normalize("NFKC", mapped)
    if not prepared or any(test(c) for c in prepared for test in _PROHIBITED):
        return password
    right_to_left = [stringprep.in_table_d1(c) for c in prepared]
    if any(right_to_left) and (any(stringprep.in_table_d2(c) for c in prepared)
                               or not (right_to_left[0] and right_to_left[-1])):
        return password
    return prepared


def make_verifier(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> Verifier:
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return Verifier(salt, iterations, hashlib.sha256(client_key).digest(),
                    hmac.new(salted, b"Server Key", hashlib.sha256).digest())


def encode_verifier(v: Verifier) -> str:
    """PostgreSQL's own text form: SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${v.iterations}:{b64(v.salt)}${b64(v.stored_key)}:{b64(v.server_key)}"


def decode_verifier(text: str | None) -> Verifier | None:
    if not text:
        return None
    try:
        scheme, params, keys = text.split("$")
        iterations, salt = params.split(":")
        stored, server = keys.split(":")
        if scheme != "SCRAM-SHA-256":
            return None
        return Verifier(base64.b64decode(salt), int(iterations), base64.b64decode(stored), base64.b64decode(server))
    except ValueError:
        return None
