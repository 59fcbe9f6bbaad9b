"""Python client for Agora's HTTP API, blocking (:class:`Client`) and asyncio
(:class:`AsyncClient`)::

    from agora.client import Client, Unauthorized

    with Client("https://agora.example", verify="ca.pem") as agora:
        agora.login("alice", password)
        print(agora.me().role)
"""

from agora.client.aio import AsyncClient
from agora.client.errors import (AgoraError, Conflict, ConnectionFailed, Forbidden, InvalidRequest,
                                 NotFound, PreconditionFailed, RateLimited, ServerError, TooLarge,
                                 Unauthorized, UnexpectedResponse)
from agora.client.models import (AuditEntry, AuditPage, DeletedMail, FileEntry, Health, MailAlias, MailAttachment,
                                 MailFolder, MailMessage, MailPage, MailQuota, MailSummary, MovedMail, NewShare,
                                 NewToken, SentMail, Share, Token, TransferProgress, Usage, User)
from agora.client.sql import SQLDatabase, SQLGrant, SQLResult
from agora.client.sync import Client

__all__ = [
    "Client", "AsyncClient",
    "User", "Token", "NewToken", "AuditEntry", "AuditPage", "Health",
    "FileEntry", "Usage", "Share", "NewShare", "TransferProgress",
    "MailFolder", "MailSummary", "MailPage", "MailMessage", "MailAttachment", "SentMail", "MovedMail",
    "DeletedMail", "MailQuota", "MailAlias",
    "SQLDatabase", "SQLGrant", "SQLResult",
    "AgoraError", "ConnectionFailed", "UnexpectedResponse", "InvalidRequest", "Unauthorized",
    "Forbidden", "NotFound", "Conflict", "PreconditionFailed", "TooLarge", "RateLimited", "ServerError",
]
