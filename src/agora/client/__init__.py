"""Python client for Agora's HTTP API, blocking (:class:`Client`) and asyncio
(:class:`AsyncClient`)::

    from agora.client import Client, Unauthorized

    with Client("https://agora.example", verify="ca.pem") as agora:
        agora.login("alice", password)
        print(agora.me().role)
"""

from agora.client.aio import AsyncClient
from agora.client.bank import (AccountClosed, AccountNotEmpty, AlreadyResolved, BankError, CurrencyMismatch,
                               IdConflict, InsufficientFunds, LinkedBatchFailed, NotPending, UnknownAccount,
                               UnknownCurrency, UnknownTransfer, format_amount, parse_amount)
from agora.client.errors import (AgoraError, Conflict, ConnectionFailed, Forbidden, InvalidRequest,
                                 NotFound, PreconditionFailed, RateLimited, ServerError, TooLarge,
                                 Unauthorized, UnexpectedResponse)
from agora.client.models import (AuditEntry, AuditPage, BankAccount, BankBalance, BankTransfer, Currency,
                                 DeletedMail, FileEntry, Health, LedgerCheck, MailAlias, MailAttachment, MailFolder,
                                 MailMessage, MailPage, MailQuota, MailSender, MailSummary, MovedMail, NewShare, NewToken, SentMail,
                                 Share, StatementEntry, StatementPage, Token, TransferProgress, Usage, User)
from agora.client.sql import SQLDatabase, SQLGrant, SQLResult
from agora.client.sync import Client

__all__ = [
    "Client", "AsyncClient",
    "User", "Token", "NewToken", "AuditEntry", "AuditPage", "Health",
    "FileEntry", "Usage", "Share", "NewShare", "TransferProgress",
    "MailFolder", "MailSummary", "MailPage", "MailMessage", "MailAttachment", "SentMail", "MovedMail",
    "DeletedMail", "MailQuota", "MailAlias", "MailSender",
    "Currency", "BankAccount", "BankBalance", "BankTransfer", "StatementEntry", "StatementPage", "LedgerCheck",
    "parse_amount", "format_amount",
    "BankError", "InsufficientFunds", "CurrencyMismatch", "AccountClosed", "UnknownCurrency", "NotPending",
    "UnknownAccount", "UnknownTransfer", "IdConflict", "AlreadyResolved", "AccountNotEmpty", "LinkedBatchFailed",
    "SQLDatabase", "SQLGrant", "SQLResult",
    "AgoraError", "ConnectionFailed", "UnexpectedResponse", "InvalidRequest", "Unauthorized",
    "Forbidden", "NotFound", "Conflict", "PreconditionFailed", "TooLarge", "RateLimited", "ServerError",
]
