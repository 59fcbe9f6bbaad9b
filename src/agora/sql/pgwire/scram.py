"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, server side, sans-IO.

The client's user name inside SCRAM is ignored (PostgreSQL sends it empty); the one from
the startup packet counts. Verifiers (salt, iterations, StoredKey, ServerKey) come from
core.identity, which makes them from the password; this module never sees a password.
For a user without a verifier the exchange runs against a made-up one, so that a
stranger learns nothing about which users exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from agora.core.scram import Verifier

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING = "tls-server-end-point"


class ScramError(Exception):
    """The exchange is malformed: a protocol violation (08P01)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def fake_verifier(name: str, server_secret: bytes, iterations: int = 4096) -> Verifier:
    """A stable made-up verifier for a user name that has none (it can never match)."""
    salt = _hmac(server_secret, b"salt:" + name.encode("utf-8", "replace"))[:16]
    return Verifier(salt, iterations, secrets.token_bytes(32), secrets.token_bytes(32))


def _attributes(text: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:20]!r}")
        attributes.setdefault(part[0], part[2:])
    return attributes


def parse_initial_response(data: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse body -> (mechanism, client-first-message)."""
    end = data.find(b"\x00")
    if end < 0 or len(data) < end + 5:
        raise ScramError("malformed SASLInitialResponse")
    mechanism = data[:end].decode("ascii", "replace")
    size = int.from_bytes(data[end + 1:end + 5], "big", signed=True)
    payload = data[end + 5:]
    if size == -1:
        payload = b""
    elif size != len(payload):
        raise ScramError("malformed SASLInitialResponse length")
    return mechanism, payload


class ScramServer:
    """One exchange: client_first() -> server-first bytes, client_final() -> server-final
    bytes (or ok False). ``channel_binding``: tls-server-end-point data when on TLS."""

    def __init__(self, verifier: Verifier, channel_binding: bytes | None = None):
        self.verifier = verifier
        self.channel_binding = channel_binding
        self.mechanism = MECHANISM
        self._gs2 = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def client_first(self, mechanism: str, message: bytes) -> bytes:
        if mechanism not in (MECHANISM, MECHANISM_PLUS) or (mechanism == MECHANISM_PLUS and not self.channel_binding):
            raise ScramError(f"unsupported SASL mechanism {mechanism[:40]!r}")
        self.mechanism = mechanism
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("SCRAM message is not UTF-8") from None
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramError("malformed SCRAM client-first-message")
        flag, authzid, bare = parts
        if mechanism == MECHANISM_PLUS:
            if flag != f"p={CHANNEL_BINDING}":
                raise ScramError("SCRAM-SHA-256-PLUS needs channel binding type tls-server-end-point")
        elif flag == "y" and self.channel_binding:
            # The client could have bound the channel and thinks we cannot: a downgrade.
            raise ScramError("SCRAM channel binding negotiation error")
        elif flag not in ("n", "y"):
            raise ScramError("SCRAM channel binding was not offered with this mechanism")
        if authzid:
            raise ScramError("SCRAM authorization identities are not supported")
        attributes = _attributes(bare)
        if "m" in attributes:
            raise ScramError("SCRAM extensions are not supported")
        client_nonce = attributes.get("r", "")
        if not client_nonce or any(c < "!" or c > "~" or c == "," for c in client_nonce):
            raise ScramError("malformed SCRAM nonce")
        self._gs2 = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + _b64(secrets.token_bytes(18))
        self._server_first = f"r={self._nonce},s={_b64(self.verifier.salt)},i={self.verifier.iterations}"
        return self._server_first.encode()

    def client_final(self, message: bytes) -> tuple[bool, bytes]:
        """(proof correct, server-final-message to send when it is)."""
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("SCRAM message is not UTF-8") from None
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramError("SCRAM client-final-message has no proof")
        attributes = _attributes(without_proof)
        expected_binding = self._gs2.encode()
        if self.mechanism == MECHANISM_PLUS:
            expected_binding += self.channel_binding or b""
        try:
            binding = base64.b64decode(attributes.get("c", ""), validate=True)
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM base64") from None
        if binding != expected_binding:
            raise ScramError("SCRAM channel binding check failed")
        if attributes.get("r") != self._nonce:
            raise ScramError("SCRAM nonce does not match")
        if len(proof) != 32:
            raise ScramError("malformed SCRAM proof")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.verifier.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            return False, b""
        return True, f"v={_b64(_hmac(self.verifier.server_key, auth_message))}".encode()
