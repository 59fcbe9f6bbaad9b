"""The mail service's JSON API, ``/api/v1/mail/...``: folders, messages, flags, sending,
quota, and (for admins) aliases and the addresses a user may send as beyond their own.

Every route acts on the caller's own mailbox: the store takes the authenticated User
and has no way to name another user's folders, so one user's mail is unreachable from
another's token by construction. Sending goes through ``sending.compose_and_send``, the
use case the webmail takes too (and its ``send``, SMTP submission's path), which owns
the limits and the sender check.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote as url_quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from agora.core import offload
from agora.core.errors import InvalidInput, NotFound, TooLarge
from agora.core.identity import User
from agora.mail import message, sending
from agora.mail.addresses import MAX_ADDRESS, Alias, SenderGrant
from agora.mail.sending import MAX_SUBJECT, Outgoing
from agora.mail.store import MAX_FOLDER_NAME, Folder, MailStore, MessageMeta, mail_store, normalize_folder
from agora.web.auth import api_admin, api_user, client_info
from agora.web.problems import problem

router = APIRouter()
api = APIRouter(prefix="/api/v1/mail", tags=["mail"])

TRASH = "Trash"
DEFAULT_PAGE = 50
# Messages per page of a listing: each row parses a stored summary, so one request's
# work stays bounded however large the folder; older pages follow with before_uid.
MAX_PAGE = 500
MAX_UID = 2**32 - 1  # IMAP UIDs are 32-bit
MAX_ATTACHMENTS = 100  # files in one sent message
# A send request is the message's parts plus a little: JSON or multipart framing, the
# fields; in JSON, attachments are base64 (4 bytes for every 3).
REQUEST_OVERHEAD = 64 * 1024

PROBLEM = {"model": None, "content": {"application/problem+json": {}}}
AUTH_ERRORS = {401: {"description": "Missing, unknown, revoked or expired token", **PROBLEM}}
FOLDER_ERRORS = {**AUTH_ERRORS,
                 404: {"description": "No such folder (in your mailbox)", **PROBLEM},
                 422: {"description": "Not a valid folder name", **PROBLEM}}
MESSAGE_ERRORS = {**AUTH_ERRORS,
                  404: {"description": "No such folder or message (in your mailbox)", **PROBLEM},
                  422: {"description": "Not a valid folder name", **PROBLEM}}
ADMIN_ERRORS = {**AUTH_ERRORS, 403: {"description": "Not an admin", **PROBLEM}}
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
# What a browser may do with a downloaded attachment that it opens anyway: nothing.
DOWNLOAD_CSP = "default-src 'none'; sandbox"

FolderName = Path(description="A folder of yours: INBOX, Sent, Drafts, Trash, Junk or one you made "
                              "('.' separates levels)", max_length=MAX_FOLDER_NAME)
Uid = Path(ge=1, le=MAX_UID, description="The message's IMAP UID in that folder")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- models -------------------------------------------------------------------------


class FolderOut(BaseModel):
    name: str
    special_use: str | None = Field(description="\\Sent, \\Drafts, \\Trash, \\Junk, or none")
    messages: int
    unseen: int
    size: int = Field(description="Bytes of its messages")
    subscribed: bool


class FolderRequest(Strict):
    name: str = Field(min_length=1, max_length=MAX_FOLDER_NAME)


class RenameRequest(Strict):
    to: str = Field(min_length=1, max_length=MAX_FOLDER_NAME)


class MessageItem(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    uid: int
    subject: str
    from_: str = Field(alias="from", description="The first author, decoded: 'Name <address>'")
    to: str
    date: datetime | None = Field(description="The Date header; none when absent or invalid")
    received: datetime = Field(description="When it arrived here (IMAP INTERNALDATE)")
    flags: list[str] = Field(description="IMAP flags and keywords: \\Seen, \\Flagged, \\Answered...")
    seen: bool
    flagged: bool
    answered: bool
    size: int = Field(description="Bytes of the whole message")
    has_attachments: bool

    @classmethod
    def of(cls, meta: MessageMeta) -> "MessageItem":
        summary = meta.summary
        return cls(uid=meta.uid, subject=summary.subject, from_=summary.from_, to=summary.to, date=summary.date,
                   received=meta.internaldate, flags=sorted(meta.flags, key=str.lower),
                   seen="\\Seen" in meta.flags, flagged="\\Flagged" in meta.flags,
                   answered="\\Answered" in meta.flags, size=meta.size, has_attachments=summary.has_attachments)


class MessagePage(BaseModel):
    folder: str
    uidvalidity: int
    total: int = Field(description="Messages in the folder")
    messages: list[MessageItem] = Field(description="Newest (highest UID) first")
    next_before_uid: int | None = Field(description="Pass as before_uid for the next, older page; "
                                                     "none on the last page")


class AttachmentOut(BaseModel):
    index: int = Field(description="For .../attachments/{index}")
    filename: str
    content_type: str
    size: int = Field(description="Decoded bytes")


class MessageOut(MessageItem):
    folder: str
    cc: str
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    text: str | None = Field(description="The text/plain body, decoded")
    html: str | None = Field(description="The text/html body, sanitised: no scripts, no remote resources")
    attachments: list[AttachmentOut]


class FlagsRequest(Strict):
    seen: bool | None = None
    flagged: bool | None = None
    answered: bool | None = None


class MoveRequest(Strict):
    to: str = Field(min_length=1, max_length=MAX_FOLDER_NAME)


class Moved(BaseModel):
    folder: str
    uid: int = Field(description="Its UID in the destination folder")
    uidvalidity: int


class Deleted(BaseModel):
    expunged: bool = Field(description="True: it was in Trash and is gone; false: it was moved to Trash")
    folder: str | None = Field(description="Trash, when moved there")
    uid: int | None = Field(description="Its UID in Trash, when moved there")


class AttachmentIn(Strict):
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", max_length=255)
    content_base64: str


class SendRequest(Strict):
    sender: str | None = Field(None, alias="from", max_length=2 * MAX_ADDRESS,
                               description="One of your addresses (default: yours at the first mail domain)")
    to: list[str] = Field([], description="Addresses, 'Name <address>' or comma-separated lists of them")
    cc: list[str] = []
    bcc: list[str] = Field([], description="Recipients not written in the message")
    subject: str = Field("", max_length=MAX_SUBJECT)
    text: str = ""
    in_reply_to: str | None = Field(None, max_length=MAX_SUBJECT, description="The Message-ID answered")
    references: list[str] = []
    attachments: list[AttachmentIn] = Field([], max_length=MAX_ATTACHMENTS)


class SendResult(BaseModel):
    message_id: str
    delivered: list[str] = Field(description="Local recipients: in their mailboxes now")
    queued: list[str] = Field(description="Recipients at other domains: in the outbound queue")
    sent_uid: int | None = Field(description="UID of the copy in your Sent folder")
    size: int


class QuotaOut(BaseModel):
    used: int = Field(description="Bytes of mail stored, all folders together")
    limit: int = Field(description="Bytes allowed (mail.quota)")


class AliasOut(BaseModel):
    address: str = Field(description="local@domain, or @domain for the domain's catch-all")
    user: str
    created_at: datetime

    @classmethod
    def of(cls, alias: Alias) -> "AliasOut":
        return cls(address=alias.address, user=alias.user, created_at=alias.created_at)


class AliasRequest(Strict):
    address: str = Field(min_length=2, max_length=MAX_ADDRESS)
    user: str = Field(min_length=1, max_length=200)


class SenderOut(BaseModel):
    user: str
    pattern: str = Field(description="An address (news@example.org), or * for any part (*@example.org)")
    created_at: datetime

    @classmethod
    def of(cls, grant: SenderGrant) -> "SenderOut":
        return cls(user=grant.user, pattern=grant.pattern, created_at=grant.created_at)


class SenderRequest(Strict):
    user: str = Field(min_length=1, max_length=200)
    pattern: str = Field(min_length=3, max_length=MAX_ADDRESS,
                         description="An address, or * for any part of one: *@example.org")


# -- helpers ------------------------------------------------------------------------


def _store(request: Request) -> MailStore:
    return mail_store(request.app.state.runtime)


async def _folder_out(store: MailStore, user: User, folder: Folder) -> FolderOut:
    status = await store.status(user, folder.name)
    return FolderOut(name=folder.name, special_use=folder.special_use, messages=status.messages,
                     unseen=status.unseen, size=status.size, subscribed=folder.subscribed)


def content_disposition(name: str) -> str:
    """``attachment`` with ``name``: an ASCII fallback and RFC 6266's UTF-8 filename*."""
    name = re.sub(r"[\x00-\x1f\x7f]", " ", name).strip() or "attachment"
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{url_quote(name, safe='')}"


def _media_type(content_type: str | None, filename: str) -> str:
    if content_type and _MEDIA_TYPE.match(content_type) and content_type.lower() != "application/octet-stream":
        return content_type.lower()
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _safe_filename(name: str) -> str:
    name = re.sub(r"[\x00-\x1f\x7f]", "", name.replace("\\", "/")).split("/")[-1].strip()
    return name if name not in ("", ".", "..") else "attachment"


# -- folders ------------------------------------------------------------------------


@api.get("/folders", response_model=list[FolderOut], responses=AUTH_ERRORS, summary="Your folders, INBOX first")
async def folders(request: Request, user: User = Depends(api_user)) -> list[FolderOut]:
    store = _store(request)
    ordered = sorted(await store.folders(user), key=lambda f: (f.name != "INBOX", f.name.lower()))
    return [await _folder_out(store, user, folder) for folder in ordered]


@api.post("/folders", response_model=FolderOut, status_code=201, summary="Create a folder",
          responses={**AUTH_ERRORS, 403: {"description": "Too many folders", **PROBLEM},
                     409: {"description": "It exists", **PROBLEM},
                     422: {"description": "Not a valid folder name", **PROBLEM}})
async def create_folder(request: Request, body: FolderRequest, user: User = Depends(api_user)) -> FolderOut:
    store = _store(request)
    return await _folder_out(store, user, await store.create_folder(user, body.name))


@api.delete("/folders/{name}", status_code=204, response_class=Response, summary="Delete a folder and its messages",
            responses={**FOLDER_ERRORS, 403: {"description": "INBOX and the special folders stay", **PROBLEM},
                       409: {"description": "It has subfolders", **PROBLEM}})
async def delete_folder(request: Request, name: str = FolderName, user: User = Depends(api_user)) -> Response:
    await _store(request).delete_folder(user, name)
    return Response(status_code=204)


@api.post("/folders/{name}/rename", response_model=FolderOut, summary="Rename a folder (and its subfolders)",
          responses={**FOLDER_ERRORS, 403: {"description": "The special folders keep their names", **PROBLEM},
                     409: {"description": "The new name is taken", **PROBLEM}})
async def rename_folder(request: Request, body: RenameRequest, name: str = FolderName,
                        user: User = Depends(api_user)) -> FolderOut:
    """Renaming INBOX moves its messages to the new folder and leaves INBOX empty (as IMAP does)."""
    store = _store(request)
    await store.rename_folder(user, name, body.to)
    return await _folder_out(store, user, await store.folder(user, body.to))


# -- messages -----------------------------------------------------------------------


@api.get("/folders/{name}/messages", response_model=MessagePage, responses=FOLDER_ERRORS,
         summary="List a folder's messages, newest first")
async def list_messages(request: Request, name: str = FolderName, user: User = Depends(api_user),
                        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description=f"At most {MAX_PAGE}"),
                        before_uid: int | None = Query(None, ge=1, le=MAX_UID + 1,
                                                       description="Only messages with a lower UID "
                                                                   "(the previous page's next_before_uid)")
                        ) -> MessagePage:
    folder, metas = await _store(request).messages(user, name)
    older = [meta for meta in metas if before_uid is None or meta.uid < before_uid]
    page = older[-limit:][::-1]
    more = len(older) > len(page)
    return MessagePage(folder=folder.name, uidvalidity=folder.uidvalidity, total=len(metas),
                       messages=[MessageItem.of(meta) for meta in page],
                       next_before_uid=page[-1].uid if more else None)


async def _meta(store: MailStore, user: User, name: str, uid: int) -> tuple[Folder, MessageMeta]:
    folder = await store.folder(user, name)
    return folder, await store.meta(user, folder.name, uid)


@api.get("/folders/{name}/messages/{uid}", response_model=MessageOut, responses=MESSAGE_ERRORS,
         summary="Read a message: headers, text, sanitised HTML, the list of attachments")
async def read_message(request: Request, name: str = FolderName, uid: int = Uid,
                       user: User = Depends(api_user)) -> MessageOut:
    """Reading does not mark the message seen: `PATCH` it with `{"seen": true}`."""
    store = _store(request)
    folder, meta = await _meta(store, user, name, uid)
    raw = await store.read(user, folder.name, uid)
    rendered = await offload.run(message.render, raw)
    in_reply_to = message.header_values(raw, "in-reply-to")
    references = " ".join(message.header_values(raw, "references")).split()
    summary = rendered.summary
    return MessageOut(**MessageItem.of(meta).model_dump(), folder=folder.name, cc=summary.cc, message_id=summary.message_id,
                      in_reply_to=in_reply_to[0] if in_reply_to else None, references=references,
                      text=rendered.text, html=rendered.html,
                      attachments=[AttachmentOut(index=a.index, filename=a.filename, content_type=a.content_type,
                                                 size=a.size) for a in rendered.attachments])


@api.get("/folders/{name}/messages/{uid}/raw", response_class=Response, summary="The message as stored",
         responses={200: {"content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}}},
                    **MESSAGE_ERRORS})
async def raw_message(request: Request, name: str = FolderName, uid: int = Uid,
                      user: User = Depends(api_user)) -> Response:
    """Byte for byte what was delivered (as IMAP `BODY[]` and POP3 `RETR` give it)."""
    raw = await _store(request).read(user, name, uid)
    return Response(raw, headers={"Content-Type": "message/rfc822", "Cache-Control": "private, no-store",
                                  "Content-Disposition": content_disposition(f"{uid}.eml")})


@api.get("/folders/{name}/messages/{uid}/attachments/{index}", response_class=Response,
         summary="Download an attachment",
         responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    **MESSAGE_ERRORS})
async def download_attachment(request: Request, name: str = FolderName, uid: int = Uid,
                              index: int = Path(ge=0, le=100_000, description="From the message's attachments list"),
                              user: User = Depends(api_user)) -> Response:
    """Always a download (`Content-Disposition: attachment`), never shown inline, whatever
    its type: an HTML attachment must not run as a page of this site."""
    raw = await _store(request).read(user, name, uid)
    try:
        filename, content_type, data = await offload.run(message.attachment, raw, index)
    except IndexError:
        raise NotFound(f"message {uid} has no attachment {index}") from None
    media_type = content_type if content_type and _MEDIA_TYPE.match(content_type) else "application/octet-stream"
    # The header as given: Starlette would add "; charset=utf-8" to a text/* media_type,
    # which is not what the attachment's bytes are.
    return Response(data, headers={
        "Content-Type": media_type,
        "Content-Disposition": content_disposition(filename or f"attachment-{index + 1}"),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": DOWNLOAD_CSP,
        "Cache-Control": "private, no-store",
    })


@api.patch("/folders/{name}/messages/{uid}", status_code=204, response_class=Response, responses=MESSAGE_ERRORS,
           summary="Mark a message seen, flagged or answered (or not)")
async def set_flags(request: Request, body: FlagsRequest, name: str = FolderName, uid: int = Uid,
                    user: User = Depends(api_user)) -> Response:
    store = _store(request)
    await store.open_message(user, name, uid)  # NotFound for a message that is not there
    wanted = {"\\Seen": body.seen, "\\Flagged": body.flagged, "\\Answered": body.answered}
    add = [flag for flag, on in wanted.items() if on is True]
    remove = [flag for flag, on in wanted.items() if on is False]
    if add:
        await store.store_flags(user, name, [uid], add, "add")
    if remove:
        await store.store_flags(user, name, [uid], remove, "remove")
    return Response(status_code=204)


@api.post("/folders/{name}/messages/{uid}/move", response_model=Moved, summary="Move a message to another folder",
          responses={**MESSAGE_ERRORS, 422: {"description": "Not a valid folder name, or the same folder", **PROBLEM}})
async def move_message(request: Request, body: MoveRequest, name: str = FolderName, uid: int = Uid,
                       user: User = Depends(api_user)) -> Moved:
    uidvalidity, pairs = await _store(request).move(user, name, [uid], body.to)
    if not pairs:
        raise NotFound(f"no message {uid} in {name}")
    return Moved(folder=normalize_folder(body.to), uid=pairs[0][1], uidvalidity=uidvalidity)


@api.delete("/folders/{name}/messages/{uid}", response_model=Deleted, responses=MESSAGE_ERRORS,
            summary="Delete a message: to Trash, or for good when it is in Trash")
async def delete_message(request: Request, name: str = FolderName, uid: int = Uid,
                         user: User = Depends(api_user)) -> Deleted:
    store = _store(request)
    if normalize_folder(name) == TRASH:
        await store.store_flags(user, TRASH, [uid], ["\\Deleted"], "add")
        if not await store.expunge(user, TRASH, [uid]):
            raise NotFound(f"no message {uid} in {TRASH}")
        return Deleted(expunged=True, folder=None, uid=None)
    _, pairs = await store.move(user, name, [uid], TRASH)
    if not pairs:
        raise NotFound(f"no message {uid} in {name}")
    return Deleted(expunged=False, folder=TRASH, uid=pairs[0][1])


# -- sending ------------------------------------------------------------------------


async def _read_capped(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the request is larger than the limit of {limit} bytes (mail.max_message, "
                           "attachments in base64)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_draft(request: Request, limit: int) -> Outgoing:
    body = await _read_capped(request, limit)
    try:
        data = SendRequest.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_input=False, include_url=False)) from None
    attachments = []
    for item in data.attachments:
        try:
            content = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"attachment {item.filename!r}: content_base64 is not base64") from None
        name = _safe_filename(item.filename)
        attachments.append((name, _media_type(item.content_type, name), content))
    return Outgoing(sender=data.sender, to=data.to, cc=data.cc, bcc=data.bcc, subject=data.subject, text=data.text,
                 in_reply_to=data.in_reply_to, references=data.references, attachments=attachments)


async def _form_draft(request: Request, limit: int) -> Outgoing:
    form = await request.form(max_files=MAX_ATTACHMENTS, max_part_size=limit)
    try:
        def texts(key: str) -> list[str]:
            return [value for value in form.getlist(key) if isinstance(value, str)]

        def text(key: str, default: str = "") -> str:
            values = texts(key)
            return values[-1] if values else default

        unknown = {key for key in form.keys() if not isinstance(form.get(key), UploadFile)} - {
            "from", "to", "cc", "bcc", "subject", "text", "in_reply_to", "references"}
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
        subject = text("subject")
        if len(subject) > MAX_SUBJECT:
            raise InvalidInput(f"Subject: longer than {MAX_SUBJECT} characters")
        attachments = []
        for _, value in form.multi_items():
            if isinstance(value, UploadFile) and (value.filename or value.size):
                name = _safe_filename(value.filename or "")
                attachments.append((name, _media_type(value.content_type, name), await value.read()))
        return Outgoing(sender=text("from") or None, to=texts("to"), cc=texts("cc"), bcc=texts("bcc"),
                     subject=subject, text=text("text"), in_reply_to=text("in_reply_to") or None,
                     references=text("references").split(), attachments=attachments)
    finally:
        await form.close()


def _inlined(schema: Any, definitions: dict[str, Any]) -> Any:
    """The schema with its local $refs replaced by what they name: the route parses its
    own body, so FastAPI does not put these models in the document's components."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(definitions[schema["$ref"].rsplit("/", 1)[1]], definitions)
        return {key: _inlined(value, definitions) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inlined(item, definitions) for item in schema]
    return schema


_SEND_SCHEMA = SendRequest.model_json_schema(by_alias=True)
SEND_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(_SEND_SCHEMA, _SEND_SCHEMA.get("$defs", {}))},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "from": {"type": "string"}, "to": {"type": "array", "items": {"type": "string"}},
        "cc": {"type": "array", "items": {"type": "string"}}, "bcc": {"type": "array", "items": {"type": "string"}},
        "subject": {"type": "string"}, "text": {"type": "string"}, "in_reply_to": {"type": "string"},
        "references": {"type": "string", "description": "Message-IDs separated by spaces"},
        "attachments": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}}}


@api.post("/send", response_model=SendResult, openapi_extra=SEND_BODY, summary="Send a message",
          responses={**AUTH_ERRORS,
                     403: {"description": "`from` is not one of your addresses (or an admin's grant), or "
                                           "its name looks like another address", **PROBLEM},
                     411: {"description": "A multipart body without Content-Length", **PROBLEM},
                     413: {"description": "Larger than mail.max_message, or your mailbox is full", **PROBLEM},
                     415: {"description": "Neither JSON nor multipart/form-data", **PROBLEM},
                     422: {"description": "A bad address, an unknown local recipient, no recipient, more "
                                           "than mail.max_recipients", **PROBLEM}})
async def send_message(request: Request, user: User = Depends(api_user)) -> SendResult:
    """JSON (attachments as base64) or `multipart/form-data` (attachments as file parts;
    `to`, `cc`, `bcc` repeated or comma-separated). Local recipients have it in their
    INBOX when this answers; others are queued for delivery; a copy goes to your Sent
    folder. The message must fit in `mail.max_message` bytes once encoded, and have at
    most `mail.max_recipients` recipients; nothing over a limit is shortened, it is refused.
    `from` is one of your addresses, an alias of yours, or one an admin allowed you."""
    runtime = request.app.state.runtime
    limit = runtime.config.mail.max_message
    request_limit = limit * 4 // 3 + REQUEST_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.strip().isdigit() or int(declared) > request_limit):
        raise TooLarge(f"a message with its attachments is limited to {limit} bytes (mail.max_message)")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        draft = await _json_draft(request, request_limit)
    elif kind == "multipart/form-data":
        if declared is None:
            return problem(411, "send Content-Length with a multipart body", title="Length required",
                           instance=request.url.path)
        draft = await _form_draft(request, limit)
    else:
        return problem(415, "send application/json or multipart/form-data", instance=request.url.path)

    done = await sending.compose_and_send(runtime, user, draft)
    return SendResult(message_id=done.message_id, delivered=[address for address in done.recipients
                                                             if address not in done.sent.queued],
                      queued=done.sent.queued, sent_uid=done.sent.sent_uid, size=done.size)


@api.get("/quota", response_model=QuotaOut, responses=AUTH_ERRORS, summary="Mail storage used and allowed")
async def quota(request: Request, user: User = Depends(api_user)) -> QuotaOut:
    used, limit = await _store(request).usage(user)
    return QuotaOut(used=used, limit=limit)


# -- aliases (admin) ----------------------------------------------------------------


@api.get("/aliases", response_model=list[AliasOut], responses=ADMIN_ERRORS, summary="Mail aliases (admin)")
async def aliases(request: Request, admin: User = Depends(api_admin)) -> list[AliasOut]:
    return [AliasOut.of(alias) for alias in await _store(request).addresses.aliases()]


@api.post("/aliases", response_model=AliasOut, status_code=201, summary="Add an alias or a catch-all (admin)",
          responses={**ADMIN_ERRORS, 404: {"description": "No such user", **PROBLEM},
                     409: {"description": "The alias exists", **PROBLEM},
                     422: {"description": "Not an address at a local domain", **PROBLEM}})
async def add_alias(request: Request, body: AliasRequest, admin: User = Depends(api_admin)) -> AliasOut:
    """`address` is `local@domain` (mail to it reaches `user`, who may also send as it) or
    `@domain`, the catch-all for addresses of that domain that reach no one else."""
    alias = await _store(request).addresses.add_alias(body.address, body.user)
    await _audit(request, "mail.alias.add", admin, alias.address, {"user": alias.user})
    return AliasOut.of(alias)


@api.delete("/aliases/{address}", status_code=204, response_class=Response, summary="Remove an alias (admin)",
            responses={**ADMIN_ERRORS, 404: {"description": "No such alias", **PROBLEM}})
async def remove_alias(request: Request, address: str = Path(max_length=MAX_ADDRESS),
                       admin: User = Depends(api_admin)) -> Response:
    await _store(request).addresses.remove_alias(address)
    await _audit(request, "mail.alias.remove", admin, address.strip().lower())
    return Response(status_code=204)


# -- allowed senders (admin) ---------------------------------------------------------


@api.get("/senders", response_model=list[SenderOut], responses=ADMIN_ERRORS,
         summary="Addresses users may send as beyond their own and their aliases (admin)")
async def senders(request: Request, user: str | None = Query(None, max_length=200),
                  admin: User = Depends(api_admin)) -> list[SenderOut]:
    return [SenderOut.of(grant) for grant in await _store(request).addresses.senders(user)]


@api.post("/senders", response_model=SenderOut, status_code=201, summary="Let a user send as an address (admin)",
          responses={**ADMIN_ERRORS, 404: {"description": "No such user", **PROBLEM},
                     409: {"description": "The user may already send as it", **PROBLEM},
                     422: {"description": "Not an address or an address pattern", **PROBLEM}})
async def allow_sender(request: Request, body: SenderRequest, admin: User = Depends(api_admin)) -> SenderOut:
    """`pattern` is an address (`news@example.org`, at any domain) or one with `*` for any
    run of characters in its local part or domain (`*@example.org`): `user` may then use
    it as envelope sender and in `From:` over SMTP submission, the API and the webmail."""
    grant = await _store(request).addresses.allow_sender(body.user, body.pattern)
    await _audit(request, "mail.sender.allow", admin, grant.pattern, {"user": grant.user})
    return SenderOut.of(grant)


@api.delete("/senders/{user}/{pattern}", status_code=204, response_class=Response,
            summary="Take back an allowed sender address (admin)",
            responses={**ADMIN_ERRORS, 404: {"description": "No such user, or not allowed to them", **PROBLEM}})
async def disallow_sender(request: Request, user: str = Path(max_length=200),
                          pattern: str = Path(max_length=MAX_ADDRESS), admin: User = Depends(api_admin)) -> Response:
    await _store(request).addresses.disallow_sender(user, pattern)
    await _audit(request, "mail.sender.disallow", admin, pattern.strip().lower(), {"user": user})
    return Response(status_code=204)


async def _audit(request: Request, action: str, admin: User, target: str, details: dict[str, Any] | None = None) -> None:
    client = client_info(request)
    await request.app.state.runtime.audit.record(action, actor=admin.name, target=target, details=details,
                                                 protocol=client.protocol, client_addr=client.address)


router.include_router(api)
