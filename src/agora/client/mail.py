"""The mail sub-API: ``client.mail.folders/messages/read/raw/send/flag/move/delete/...``.

Messages are named by folder and UID (``uid`` of a listing row). Sending goes as JSON,
or as ``multipart/form-data`` when files are attached, so that their bytes travel as
they are rather than in base64.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import httpx

from agora.client._http import AsyncAPI, Call, SyncAPI, _connection_failed, json_body, many, nothing, one, query
from agora.client.errors import error_for
from agora.client.models import (DeletedMail, MailAlias, MailAttachment, MailFolder, MailMessage, MailPage,
                                 MailQuota, MailSender, MailSummary, MovedMail, SentMail, from_json)

API = "/api/v1/mail"
INBOX = "INBOX"


def _segment(value: str | int) -> str:
    return quote(str(value), safe="")


def _message_url(folder: str, uid: int) -> str:
    return f"{API}/folders/{_segment(folder)}/messages/{_segment(int(uid))}"


def _summary_fields(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    data["from_"] = data.pop("from", "")
    return data


def _summary(data: Any) -> MailSummary:
    return from_json(MailSummary, _summary_fields(data))


def _page(response: httpx.Response) -> MailPage:
    data = json_body(response)
    return MailPage(folder=data["folder"], uidvalidity=data["uidvalidity"], total=data["total"],
                    messages=[_summary(item) for item in data["messages"]],
                    next_before_uid=data.get("next_before_uid"))


def _message(response: httpx.Response) -> MailMessage:
    data = _summary_fields(json_body(response))
    data["attachments"] = [from_json(MailAttachment, item) for item in data.get("attachments", [])]
    return from_json(MailMessage, data)


def _content(response: httpx.Response) -> bytes:
    return response.content


def _addresses(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# -- calls ----------------------------------------------------------------------------


def folders() -> Call[list[MailFolder]]:
    return Call("GET", f"{API}/folders", many(MailFolder))


def create_folder(name: str) -> Call[MailFolder]:
    return Call("POST", f"{API}/folders", one(MailFolder), json={"name": name})


def delete_folder(name: str) -> Call[None]:
    return Call("DELETE", f"{API}/folders/{_segment(name)}", nothing)


def rename_folder(name: str, to: str) -> Call[MailFolder]:
    return Call("POST", f"{API}/folders/{_segment(name)}/rename", one(MailFolder), json={"to": to})


def page(folder: str, limit: int, before_uid: int | None) -> Call[MailPage]:
    return Call("GET", f"{API}/folders/{_segment(folder)}/messages", _page,
                params=query(limit=limit, before_uid=before_uid))


def read(folder: str, uid: int) -> Call[MailMessage]:
    return Call("GET", _message_url(folder, uid), _message)


def raw(folder: str, uid: int) -> Call[bytes]:
    return Call("GET", f"{_message_url(folder, uid)}/raw", _content)


def attachment(folder: str, uid: int, index: int) -> Call[bytes]:
    return Call("GET", f"{_message_url(folder, uid)}/attachments/{_segment(int(index))}", _content)


def flag(folder: str, uid: int, seen: bool | None, flagged: bool | None, answered: bool | None) -> Call[None]:
    body = query(seen=seen, flagged=flagged, answered=answered)
    return Call("PATCH", _message_url(folder, uid), nothing, json=body)


def move(folder: str, uid: int, to: str) -> Call[MovedMail]:
    return Call("POST", f"{_message_url(folder, uid)}/move", one(MovedMail), json={"to": to})


def delete(folder: str, uid: int) -> Call[DeletedMail]:
    return Call("DELETE", _message_url(folder, uid), one(DeletedMail))


def quota() -> Call[MailQuota]:
    return Call("GET", f"{API}/quota", one(MailQuota))


def aliases() -> Call[list[MailAlias]]:
    return Call("GET", f"{API}/aliases", many(MailAlias))


def add_alias(address: str, user: str) -> Call[MailAlias]:
    return Call("POST", f"{API}/aliases", one(MailAlias), json={"address": address, "user": user})


def remove_alias(address: str) -> Call[None]:
    return Call("DELETE", f"{API}/aliases/{_segment(address)}", nothing)


def senders(user: str | None = None) -> Call[list[MailSender]]:
    return Call("GET", f"{API}/senders", many(MailSender), params=query(user=user))


def allow_sender(user: str, pattern: str) -> Call[MailSender]:
    return Call("POST", f"{API}/senders", one(MailSender), json={"user": user, "pattern": pattern})


def disallow_sender(user: str, pattern: str) -> Call[None]:
    return Call("DELETE", f"{API}/senders/{_segment(user)}/{_segment(pattern)}", nothing)


class _Outgoing:
    """One message to send: the JSON body, or the form fields and files of a multipart one."""

    def __init__(self, to: str | Iterable[str], subject: str, text: str, cc: str | Iterable[str] | None,
                 bcc: str | Iterable[str] | None, attachments: Sequence[Any], sender: str | None,
                 in_reply_to: str | None, references: Iterable[str]):
        self.fields: dict[str, Any] = {"to": _addresses(to), "cc": _addresses(cc), "bcc": _addresses(bcc),
                                       "subject": subject, "text": text}
        if sender:
            self.fields["from"] = sender
        if in_reply_to:
            self.fields["in_reply_to"] = in_reply_to
        self.references = list(references)
        self.files = [self._file(item) for item in attachments]

    @staticmethod
    def _file(item: Any) -> tuple[str, bytes, str]:
        """(file name, bytes, content type) of a path, or of a (name, bytes[, type]) tuple."""
        if isinstance(item, tuple):
            name, data = item[0], item[1]
            content_type = item[2] if len(item) > 2 else None
        else:
            path = Path(item)
            name, data, content_type = path.name, path.read_bytes(), None
        return name, bytes(data), content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"

    def call(self) -> Call[SentMail]:
        return Call("POST", f"{API}/send", one(SentMail), json={**self.fields, "references": self.references})

    def form(self) -> dict[str, Any]:
        data = {key: value for key, value in self.fields.items() if value != []}
        if self.references:
            data["references"] = " ".join(self.references)
        return {"data": data, "files": [("attachments", file) for file in self.files]}


def _sent(response: httpx.Response) -> SentMail:
    if not response.is_success:
        raise error_for(response)
    return from_json(SentMail, json_body(response))


# -- blocking -------------------------------------------------------------------------


class SyncMail(SyncAPI):
    """``client.mail``: your mailbox. Messages are named by folder and UID."""

    def folders(self) -> list[MailFolder]:
        return self._run(folders())

    def create_folder(self, name: str) -> MailFolder:
        return self._run(create_folder(name))

    def delete_folder(self, name: str) -> None:
        self._run(delete_folder(name))

    def rename_folder(self, name: str, to: str) -> MailFolder:
        return self._run(rename_folder(name, to))

    def messages(self, folder: str = INBOX, limit: int = 50, *, before_uid: int | None = None) -> list[MailSummary]:
        """The newest ``limit`` messages of ``folder`` (below ``before_uid``), newest first."""
        return self._run(page(folder, limit, before_uid)).messages

    def page(self, folder: str = INBOX, limit: int = 50, *, before_uid: int | None = None) -> MailPage:
        """A page of the listing, with ``next_before_uid`` for the next, older one."""
        return self._run(page(folder, limit, before_uid))

    def read(self, folder: str, uid: int) -> MailMessage:
        """Headers, text, sanitised HTML and attachments' list; does not mark it seen."""
        return self._run(read(folder, uid))

    def raw(self, folder: str, uid: int) -> bytes:
        """The message byte for byte as stored (RFC 5322)."""
        return self._run(raw(folder, uid))

    def attachment(self, folder: str, uid: int, index: int) -> bytes:
        return self._run(attachment(folder, uid, index))

    def send(self, to: str | Iterable[str], subject: str = "", text: str = "", *,
             cc: str | Iterable[str] | None = None, bcc: str | Iterable[str] | None = None,
             attachments: Sequence[Any] = (), sender: str | None = None, in_reply_to: str | None = None,
             references: Iterable[str] = ()) -> SentMail:
        """Send a message; ``attachments`` are paths, or (name, bytes[, content type]) tuples."""
        outgoing = _Outgoing(to, subject, text, cc, bcc, attachments, sender, in_reply_to, references)
        if not outgoing.files:
            return self._run(outgoing.call())
        try:
            response = self._transport.http.post(f"{API}/send", **outgoing.form())
        except httpx.TransportError as error:
            raise _connection_failed(self._transport.base_url, error) from None
        return _sent(response)

    def flag(self, folder: str, uid: int, *, seen: bool | None = None, flagged: bool | None = None,
             answered: bool | None = None) -> None:
        """Set (True) or clear (False) the flags given; those left None stay as they are."""
        self._run(flag(folder, uid, seen, flagged, answered))

    def move(self, folder: str, uid: int, to: str) -> MovedMail:
        return self._run(move(folder, uid, to))

    def delete(self, folder: str, uid: int) -> DeletedMail:
        """Move to Trash; a message already in Trash is deleted for good."""
        return self._run(delete(folder, uid))

    def quota(self) -> MailQuota:
        return self._run(quota())

    def aliases(self) -> list[MailAlias]:
        """Every alias (admins only)."""
        return self._run(aliases())

    def add_alias(self, address: str, user: str) -> MailAlias:
        """Mail to ``address`` (``@domain``: the catch-all) reaches ``user`` (admins only)."""
        return self._run(add_alias(address, user))

    def remove_alias(self, address: str) -> None:
        self._run(remove_alias(address))

    def senders(self, user: str | None = None) -> list[MailSender]:
        """Addresses users may send as beyond their own and their aliases (admins only)."""
        return self._run(senders(user))

    def allow_sender(self, user: str, pattern: str) -> MailSender:
        """Let ``user`` send as ``pattern``: an address, or ``*@example.org`` (admins only)."""
        return self._run(allow_sender(user, pattern))

    def disallow_sender(self, user: str, pattern: str) -> None:
        self._run(disallow_sender(user, pattern))


# -- async ----------------------------------------------------------------------------


class AsyncMail(AsyncAPI):
    """``client.mail`` of the AsyncClient: the same operations, awaited."""

    async def folders(self) -> list[MailFolder]:
        return await self._run(folders())

    async def create_folder(self, name: str) -> MailFolder:
        return await self._run(create_folder(name))

    async def delete_folder(self, name: str) -> None:
        await self._run(delete_folder(name))

    async def rename_folder(self, name: str, to: str) -> MailFolder:
        return await self._run(rename_folder(name, to))

    async def messages(self, folder: str = INBOX, limit: int = 50, *,
                       before_uid: int | None = None) -> list[MailSummary]:
        return (await self._run(page(folder, limit, before_uid))).messages

    async def page(self, folder: str = INBOX, limit: int = 50, *, before_uid: int | None = None) -> MailPage:
        return await self._run(page(folder, limit, before_uid))

    async def read(self, folder: str, uid: int) -> MailMessage:
        return await self._run(read(folder, uid))

    async def raw(self, folder: str, uid: int) -> bytes:
        return await self._run(raw(folder, uid))

    async def attachment(self, folder: str, uid: int, index: int) -> bytes:
        return await self._run(attachment(folder, uid, index))

    async def send(self, to: str | Iterable[str], subject: str = "", text: str = "", *,
                   cc: str | Iterable[str] | None = None, bcc: str | Iterable[str] | None = None,
                   attachments: Sequence[Any] = (), sender: str | None = None, in_reply_to: str | None = None,
                   references: Iterable[str] = ()) -> SentMail:
        outgoing = _Outgoing(to, subject, text, cc, bcc, attachments, sender, in_reply_to, references)
        if not outgoing.files:
            return await self._run(outgoing.call())
        try:
            response = await self._transport.http.post(f"{API}/send", **outgoing.form())
        except httpx.TransportError as error:
            raise _connection_failed(self._transport.base_url, error) from None
        return _sent(response)

    async def flag(self, folder: str, uid: int, *, seen: bool | None = None, flagged: bool | None = None,
                   answered: bool | None = None) -> None:
        await self._run(flag(folder, uid, seen, flagged, answered))

    async def move(self, folder: str, uid: int, to: str) -> MovedMail:
        return await self._run(move(folder, uid, to))

    async def delete(self, folder: str, uid: int) -> DeletedMail:
        return await self._run(delete(folder, uid))

    async def quota(self) -> MailQuota:
        return await self._run(quota())

    async def aliases(self) -> list[MailAlias]:
        return await self._run(aliases())

    async def add_alias(self, address: str, user: str) -> MailAlias:
        return await self._run(add_alias(address, user))

    async def remove_alias(self, address: str) -> None:
        await self._run(remove_alias(address))

    async def senders(self, user: str | None = None) -> list[MailSender]:
        return await self._run(senders(user))

    async def allow_sender(self, user: str, pattern: str) -> MailSender:
        return await self._run(allow_sender(user, pattern))

    async def disallow_sender(self, user: str, pattern: str) -> None:
        await self._run(disallow_sender(user, pattern))
