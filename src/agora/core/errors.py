"""Domain errors shared by every service; each protocol adapter maps them to its own
error replies (HTTP problem types, FTP 5xx, SMTP/IMAP NO, SQLSTATE...)."""

from __future__ import annotations


class AgoraError(Exception):
    """Base of the errors a client may be told about. ``slug`` names the problem type."""

    slug = "error"
    title = "Request failed"

    def __init__(self, detail: str | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title


class InvalidInput(AgoraError):
    slug, title = "invalid-input", "Invalid input"


class NotFound(AgoraError):
    slug, title = "not-found", "Not found"


class Conflict(AgoraError):
    slug, title = "conflict", "Conflict"


class Forbidden(AgoraError):
    slug, title = "forbidden", "Forbidden"


class AuthenticationFailed(AgoraError):
    slug, title = "authentication-failed", "Authentication failed"


class NotAuthenticated(AuthenticationFailed):
    """No credentials, or credentials that are no longer valid."""

    slug, title = "unauthenticated", "Authentication required"


class EncryptionRequired(AgoraError):
    slug, title = "encryption-required", "Encryption required"


class RateLimited(AgoraError):
    slug, title = "rate-limited", "Too many attempts"

    def __init__(self, retry_after: float, detail: str | None = None):
        super().__init__(detail or f"too many failed attempts; retry in {max(1, round(retry_after))} s")
        self.retry_after = retry_after


class TooLarge(AgoraError):
    slug, title = "too-large", "Too large"


class TooSlow(TooLarge):
    """Work a request asked for did not end within its deadline (heavy_work_timeout)."""

    slug, title = "too-slow", "Too much work"


class StorageFull(AgoraError):
    """The server's disk (or its filesystem quota) has no room for a write: the request
    fails whole, nothing is acknowledged, reads go on."""

    slug, title = "storage-full", "Insufficient storage"
