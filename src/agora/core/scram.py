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
from dataclasses import dataclass

ITERATIONS = 4096  # PostgreSQL's scram_iterations default


@dataclass(frozen=True)
class Verifier:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def make_verifier(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> Verifier:
    # PostgreSQL applies SASLprep first; for the passwords people type (no mapped or
    # prohibited code points) that changes nothing, so plain UTF-8 is used.
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
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
