"""The bank's distinct refusals, each its own problem type (``urn:agora:problem:<slug>``).

Business rules the ledger refuses (funds, currencies, closed accounts) are 422: the
request was understood and is not allowed to happen. A transfer id reused with other
contents is 409, as Stripe answers a reused idempotency key.
"""

from __future__ import annotations

from agora.core.errors import AgoraError, Conflict, Forbidden, InvalidInput, NotFound


class InsufficientFunds(InvalidInput):
    slug, title = "insufficient-funds", "Insufficient funds"


class CurrencyMismatch(InvalidInput):
    slug, title = "currency-mismatch", "Currency mismatch"


class AccountClosed(InvalidInput):
    slug, title = "account-closed", "Account closed"


class UnknownCurrency(InvalidInput):
    slug, title = "unknown-currency", "Unknown currency"


class NotPending(InvalidInput):
    slug, title = "not-pending", "Not a pending transfer"


class UnknownAccount(NotFound):
    slug, title = "unknown-account", "Unknown account"


class UnknownTransfer(NotFound):
    slug, title = "unknown-transfer", "Unknown transfer"


class IdempotencyConflict(Conflict):
    slug, title = "idempotency-conflict", "Transfer id already used with other contents"


class PendingResolved(Conflict):
    slug, title = "pending-resolved", "Pending transfer already resolved"


class AccountNotEmpty(Conflict):
    slug, title = "account-not-empty", "Account not empty"


class NotYourAccount(Forbidden):
    slug, title = "forbidden", "Forbidden"


class BatchFailed(AgoraError):
    """A linked batch committed nothing; ``errors`` holds (index, error) of each failing
    item. The batch as a whole answers with its first failure's status and type."""

    def __init__(self, errors: list[tuple[int, AgoraError]]):
        index, first = errors[0]
        super().__init__(f"transfer {index} of the batch: {first.detail} (nothing was committed)")
        self.errors = errors
        self.first = first
        self.slug, self.title = first.slug, first.title
