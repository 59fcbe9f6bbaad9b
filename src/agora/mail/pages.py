"""The webmail at ``/mail``: folders, the message list, reading, compose, reply, forward,
delete and move.

Session pages like the rest of the UI (``web/pages.py``): every POST carries the
session's CSRF token and calls the mail domain directly (``store.py``, and
``sending.compose_and_send`` for outgoing mail, the API's use case, which owns the
limits and the sender check), never the JSON API.
Folders and UIDs are looked up among the session user's own mailboxes only, so another
user's message is simply not found.

A message's HTML is sanitised by ``message.render``, and still shown only inside a
sandboxed iframe whose own response forbids scripts, remote content and plugins
(``BODY_CSP``): should the sanitiser miss something, nothing in it can run.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, field as dataclass_field
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import formataddr, getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader
from starlette.datastructures import FormData, UploadFile

from agora.core import offload
from agora.core.errors import AgoraError, Forbidden, InvalidInput, NotFound, TooLarge
from agora.core.identity import Session, User
from agora.mail import message
from agora.mail.sending import Outgoing, compose_and_send
from agora.mail.store import INBOX, SPECIAL_USE, MailStore, MessageMeta, mail_store, normalize_folder
from agora.web import pages
from agora.web.pages import PageRoute, check_csrf, is_htmx, safe_next, viewer, actor
from agora.web.problems import status_of

router = APIRouter(prefix="/mail", route_class=PageRoute, include_in_schema=False)

# The layout of the web UI, plus this service's own templates (under mail/templates).
templates = Jinja2Templates(env=pages.templates.env.overlay(loader=ChoiceLoader([
    FileSystemLoader(Path(__file__).parent / "templates"), pages.templates.env.loader])))

PAGE_SIZE = 50
MAX_ATTACHMENTS = 50  # files of one compose form
# A compose form is its attachments plus a little: fields, multipart framing.
FORM_OVERHEAD = 256 * 1024
MAX_BODY = 1024 * 1024  # characters of the text typed in
# A compose field is taken whole (up to the form's part size) and checked by the use case,
# never cut: a To: cut at some length could end in the middle of an address.
MAX_PART = 4 * MAX_BODY
# What the iframe of a message's HTML may do: show it, with inline styles and embedded
# images, and open its links in a new tab; nothing else (no script, form, plugin or
# remote image, which would tell the sender that the message was read).
BODY_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"
BODY_CSP = ("default-src 'none'; img-src cid: data:; style-src 'unsafe-inline'; frame-ancestors 'self'; "
            f"sandbox {BODY_SANDBOX}")
DOWNLOAD_CSP = "default-src 'none'; sandbox"
BODY_PAGE = ('<!doctype html><html><head><meta charset="utf-8">'
             '<style>body{{font:15px/1.5 system-ui,sans-serif;margin:.5rem;overflow-wrap:anywhere}}'
             'img{{max-width:100%;height:auto}}</style></head><body>{}</body></html>')
# Folders in the order mail clients show them; others follow alphabetically.
FOLDER_ORDER = {INBOX: 0, "Drafts": 1, "Sent": 2, "Junk": 3, "Trash": 4}
TRASH = "Trash"
NOTICES = {
    "sent": "Message sent.",
    "queued": "Message sent; mail for other servers is queued and delivered shortly.",
    "deleted": "Moved to Trash.",
    "expunged": "Deleted for good.",
    "moved": "Moved.",
    "created": "Folder created.",
    "removed": "Folder deleted.",
}
_size = pages.templates.env.filters["size"]  # 1536 -> "1.5 KiB", as the rest of the UI says it
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")


# -- helpers --------------------------------------------------------------------------


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def _store(request: Request) -> MailStore:
    return mail_store(_runtime(request))


def _page(request: Request, template: str, session: Session, *, status: int = 200, **context: Any) -> Response:
    context.update(user=session.user, csrf=session.csrf_token)
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _value(source: Any, name: str, limit: int = pages.MAX_FIELD) -> str:
    value = source.get(name)
    return value[:limit] if isinstance(value, str) else ""


def folder_url(folder: str, page: int = 1, notice: str | None = None) -> str:
    query = {}
    if folder != INBOX:
        query["folder"] = folder
    if page > 1:
        query["page"] = str(page)
    if notice:
        query["notice"] = notice
    return "/mail" + (f"?{urlencode(query)}" if query else "")


def message_url(folder: str, uid: int, **extra: Any) -> str:
    return f"/mail/message?{urlencode({'folder': folder, 'uid': uid, **extra})}"


def _folder(value: str | None) -> str:
    return normalize_folder(value) if value else INBOX


def _number(value: str | None, digits: int = 10) -> int | None:
    """A whole number written in ASCII digits (``str.isdigit`` also takes "²"), or None."""
    if not value or len(value) > digits or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def _uid(value: str | None) -> int:
    uid = _number(value)
    if uid is None:
        raise NotFound("no such message")
    return uid


def _uids(form: FormData) -> list[int]:
    uids = [_uid(value) for value in form.getlist("uid") if isinstance(value, str)]
    if not uids:
        raise InvalidInput("select at least one message")
    return uids


def _done(request: Request, url: str) -> Response:
    """After a change: back to ``url`` (htmx follows HX-Redirect, a plain form the 303)."""
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def _next(form: FormData, default: str) -> str:
    target = safe_next(_value(form, "next"), default)
    return target if target.startswith("/mail") else default


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _names(addresses: str) -> str:
    """Who, shortly: display names where there are, else addresses."""
    people = getaddresses([addresses]) if addresses else []
    return ", ".join(name or address for name, address in people) or addresses


# -- folders --------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderItem:
    name: str
    unseen: int
    messages: int
    special: bool

    @property
    def label(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def depth(self) -> int:
        return self.name.count(".")

    @property
    def href(self) -> str:
        return folder_url(self.name)


def _folder_key(name: str) -> tuple[int, list[str]]:
    parts = name.split(".")
    return FOLDER_ORDER.get(parts[0], len(FOLDER_ORDER)), [part.lower() for part in parts]


async def _folders(store: MailStore, user: User) -> list[FolderItem]:
    items = []
    for folder in await store.folders(user):
        status = await store.status(user, folder.name)
        items.append(FolderItem(folder.name, status.unseen, status.messages,
                                folder.name == INBOX or folder.name in SPECIAL_USE))
    return sorted(items, key=lambda item: _folder_key(item.name))


async def _layout(request: Request, session: Session, current: str) -> dict[str, Any]:
    """What every webmail page shows around its content: the folder list."""
    store = _store(request)
    folders = await _folders(store, session.user)
    return {"folders": folders, "current": current, "address": store.address_of(session.user),
            "move_targets": [item.name for item in folders]}


# -- the message list -----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    folder: str
    meta: MessageMeta
    who: str
    subject: str

    @property
    def uid(self) -> int:
        return self.meta.uid

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.meta.flags

    @property
    def flagged(self) -> bool:
        return "\\Flagged" in self.meta.flags

    @property
    def answered(self) -> bool:
        return "\\Answered" in self.meta.flags

    @property
    def date(self) -> str:
        return _when(self.meta.internaldate)

    @property
    def attachments(self) -> bool:
        return bool(self.meta.summary.has_attachments)

    @property
    def href(self) -> str:
        return message_url(self.folder, self.uid)


def _row(folder: str, meta: MessageMeta) -> Row:
    summary = meta.summary
    outgoing = folder in ("Sent", "Drafts")
    who = _names(summary.to if outgoing else summary.from_)
    return Row(folder, meta, ("To: " + who if outgoing and who else who) or "(nobody)",
               summary.subject or "(no subject)")


@router.get("", name="mail.home")
async def folder_page(request: Request, session: Session = Depends(viewer)) -> Response:
    name = _folder(request.query_params.get("folder"))
    store = _store(request)
    folder, metas = await store.messages(session.user, name)
    pages_total = max(1, -(-len(metas) // PAGE_SIZE))
    number = min(max(1, _number(request.query_params.get("page"), 6) or 1), pages_total)
    newest_first = metas[::-1][(number - 1) * PAGE_SIZE:number * PAGE_SIZE]
    rows = [_row(folder.name, meta) for meta in newest_first]
    return _page(request, "mail/folder.html", session, **await _layout(request, session, folder.name),
                 folder=folder.name, rows=rows, page=number, pages=pages_total, total=len(metas),
                 newer=folder_url(folder.name, number - 1) if number > 1 else None,
                 older=folder_url(folder.name, number + 1) if number < pages_total else None,
                 here=folder_url(folder.name, number), in_trash=folder.name == TRASH,
                 notice=NOTICES.get(request.query_params.get("notice", "")))


# -- reading --------------------------------------------------------------------------


def _headers(raw: bytes) -> Any:
    """The message's header fields, decoded (for reply addresses and References)."""
    return BytesHeaderParser(policy=default_policy).parsebytes(raw)


def _header(headers: Any, name: str) -> str:
    try:
        value = headers.get(name)
    except Exception:  # a malformed field: the stdlib's parser raises on some
        return ""
    return " ".join(str(value).split()) if value is not None else ""


@router.get("/message")
async def read_message(request: Request, session: Session = Depends(viewer)) -> Response:
    name = _folder(request.query_params.get("folder"))
    uid = _uid(request.query_params.get("uid"))
    store = _store(request)
    raw = await store.read(session.user, name, uid)
    rendered = await offload.run(message.render, raw)
    # Opening a message reads it, as a FETCH of its body does over IMAP.
    await store.store_flags(session.user, name, [uid], ["\\Seen"], "add")
    folder, metas = await store.messages(session.user, name)
    uids = [meta.uid for meta in metas]
    position = uids.index(uid) if uid in uids else -1
    meta = metas[position] if position >= 0 else None
    view = "text" if request.query_params.get("view") == "text" or not rendered.html else "html"
    summary = rendered.summary
    return _page(
        request, "mail/message.html", session, **await _layout(request, session, folder.name),
        folder=folder.name, uid=uid, summary=summary, subject=summary.subject or "(no subject)",
        sender=summary.from_, to=summary.to, cc=summary.cc, date=_when(summary.date),
        text=rendered.text or "", has_html=bool(rendered.html), view=view,
        body_url=f"/mail/message/body?{urlencode({'folder': folder.name, 'uid': uid})}",
        attachments=rendered.attachments, flagged=bool(meta and "\\Flagged" in meta.flags),
        newer=message_url(folder.name, uids[position + 1]) if 0 <= position < len(uids) - 1 else None,
        older=message_url(folder.name, uids[position - 1]) if position > 0 else None,
        back=folder_url(folder.name, 1 + (len(uids) - 1 - position) // PAGE_SIZE if position >= 0 else 1),
        in_trash=folder.name == TRASH, sandbox=BODY_SANDBOX)


@router.get("/message/body")
async def message_body(request: Request, session: Session = Depends(viewer)) -> Response:
    """The sanitised HTML of a message, for the sandboxed iframe of the reading view."""
    name = _folder(request.query_params.get("folder"))
    raw = await _store(request).read(session.user, name, _uid(request.query_params.get("uid")))
    rendered = await offload.run(message.render, raw)
    return Response(BODY_PAGE.format(rendered.html or ""), media_type="text/html; charset=utf-8", headers={
        "Content-Security-Policy": BODY_CSP,
        "X-Frame-Options": "SAMEORIGIN",  # only our own reading view frames it
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    })


def content_disposition(name: str) -> str:
    """``attachment`` with ``name``: an ASCII fallback and RFC 6266's UTF-8 filename*."""
    name = name.replace("\r", " ").replace("\n", " ") or "attachment"
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{url_quote(name, safe='')}"


@router.get("/message/attachment")
async def download_attachment(request: Request, session: Session = Depends(viewer)) -> Response:
    name = _folder(request.query_params.get("folder"))
    raw = await _store(request).read(session.user, name, _uid(request.query_params.get("uid")))
    index = _number(request.query_params.get("index"), 6)
    if index is None:
        raise NotFound("no such attachment")
    try:
        filename, content_type, data = await offload.run(message.attachment, raw, index)
    except IndexError:
        raise NotFound("no such attachment") from None
    media_type = content_type if content_type and _MEDIA_TYPE.match(content_type) else "application/octet-stream"
    return Response(data, media_type=media_type, headers={
        "Content-Disposition": content_disposition(filename or f"attachment-{index}"),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": DOWNLOAD_CSP,
        "Cache-Control": "private, no-store",
    })


# -- flags, delete, move, folders ----------------------------------------------------


async def _set_flag(store: MailStore, user: User, name: str, uids: list[int], flag: str, on: bool) -> None:
    changed = {meta.uid for meta in await store.store_flags(user, name, uids, [flag], "add" if on else "remove")}
    for uid in set(uids) - changed:
        await store.open_message(user, name, uid)  # NotFound for a message that is not there


@router.post("/flag")
async def flag(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    name, uid = _folder(_value(form, "folder")), _uid(_value(form, "uid"))
    flagged = _value(form, "flagged") == "1"
    await _set_flag(_store(request), session.user, name, [uid], "\\Flagged", flagged)
    if is_htmx(request):
        return _page(request, "mail/_star.html", session, folder=name, uid=uid, flagged=flagged,
                     here=_next(form, message_url(name, uid)))
    return RedirectResponse(_next(form, folder_url(name)), status_code=303)


@router.post("/seen")
async def seen(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    name = _folder(_value(form, "folder"))
    await _set_flag(_store(request), session.user, name, _uids(form), "\\Seen", _value(form, "seen") != "0")
    return _done(request, _next(form, folder_url(name)))


@router.post("/delete")
async def delete(request: Request, session: Session = Depends(actor)) -> Response:
    """To Trash; in Trash, for good (as \\Deleted and an expunge of just these)."""
    form = await request.form()
    name = _folder(_value(form, "folder"))
    uids = _uids(form)
    store = _store(request)
    if name == TRASH:
        await store.store_flags(session.user, name, uids, ["\\Deleted"], "add")
        gone = await store.expunge(session.user, name, uids)
        notice = "expunged"
    else:
        _, pairs = await store.move(session.user, name, uids, TRASH)
        gone, notice = [source for source, _ in pairs], "deleted"
    if not gone:
        raise NotFound("no such message")
    return _done(request, folder_url(name, notice=notice))


@router.post("/move")
async def move(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    name = _folder(_value(form, "folder"))
    target = _folder(_value(form, "to"))
    _, pairs = await _store(request).move(session.user, name, _uids(form), target)
    if not pairs:
        raise NotFound("no such message")
    return _done(request, folder_url(name, notice="moved"))


@router.post("/folders")
async def create_folder(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    created = await _store(request).create_folder(session.user, _value(form, "name"))
    return _done(request, folder_url(created.name, notice="created"))


@router.post("/folders/delete")
async def delete_folder(request: Request, session: Session = Depends(actor)) -> Response:
    form = await request.form()
    await _store(request).delete_folder(session.user, _folder(_value(form, "folder")))
    return _done(request, folder_url(INBOX, notice="removed"))


# -- compose, reply, forward ----------------------------------------------------------


@dataclass
class Draft:
    """What the compose form holds, prefilled for a reply or forward."""

    sender: str = ""  # the From: field; empty: the user's own address
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str = ""
    references: str = ""
    reply_folder: str = ""
    reply_uid: str = ""
    forward_folder: str = ""
    forward_uid: str = ""
    forwarded: list[Any] = dataclass_field(default_factory=list)  # the original's attachments
    kept: set[int] = dataclass_field(default_factory=set)  # indexes of those to send along

    LINES = ("sender", "to", "cc", "bcc", "subject", "in_reply_to", "references", "reply_folder",
             "reply_uid", "forward_folder", "forward_uid")  # one line each: header material
    FIELDS = {"sender": "from"}  # the form's name where it is not the attribute's

    @classmethod
    def from_form(cls, form: FormData) -> "Draft":
        draft = cls(**{name: " ".join(_value(form, cls.FIELDS.get(name, name), MAX_PART).splitlines())
                       for name in cls.LINES}, body=_value(form, "body", MAX_BODY))
        draft.kept = {n for n in (_number(v, 6) for v in form.getlist("forward_attachment")
                                  if isinstance(v, str)) if n is not None}
        return draft


async def _original(request: Request, session: Session, folder: str, uid: str) -> tuple[str, int, bytes, Any]:
    name, number = _folder(folder), _uid(uid)
    raw = await _store(request).read(session.user, name, number)
    return name, number, raw, await offload.run(message.render, raw)


def _bare(text: str) -> list[str]:
    return [address for _, address in getaddresses([text]) if address]


async def _reply_draft(request: Request, session: Session, draft: Draft, mode: str, raw: bytes,
                       rendered: Any) -> None:
    store = _store(request)
    headers = _headers(raw)
    summary = rendered.summary
    sender = _header(headers, "reply-to") or _header(headers, "from")
    original_to, original_cc = _header(headers, "to"), _header(headers, "cc")
    mine = [address for address in _bare(sender) if await store.owns_address(session.user, address)]
    if mine and original_to:
        sender = original_to  # a reply to one's own message goes to its recipients again
    draft.to = sender
    for address in _bare(original_to + ", " + original_cc):
        if address.lower() != store.address_of(session.user).lower() and \
                await store.owns_address(session.user, address):
            draft.sender = address  # answered from the alias it was written to
            break
    if mode == "replyall":
        seen_addresses = {address.lower() for address in _bare(sender)}
        others = []
        for name, address in getaddresses([original_to, original_cc]):
            if not address or address.lower() in seen_addresses or await store.owns_address(session.user, address):
                continue
            seen_addresses.add(address.lower())
            others.append(formataddr((name, address)) if name else address)
        draft.cc = ", ".join(others)
    draft.subject = message.reply_subject(summary.subject or "")
    author = _header(headers, "from") or summary.from_
    draft.body = "\n\n" + message.quote(rendered.text or "", author, summary.date)
    message_id = summary.message_id or _header(headers, "message-id")
    if message_id:
        draft.in_reply_to = message_id
        draft.references = " ".join((_header(headers, "references") + " " + message_id).split())


def _forward_draft(draft: Draft, raw: bytes, rendered: Any) -> None:
    headers = _headers(raw)
    summary = rendered.summary
    draft.subject = message.forward_subject(summary.subject or "")
    lines = ["", "", "---------- Forwarded message ----------"]
    for label, name in (("From", "from"), ("Date", "date"), ("Subject", "subject"), ("To", "to"), ("Cc", "cc")):
        value = _header(headers, name)
        if value:
            lines.append(f"{label}: {value}")
    draft.body = "\n".join(lines) + "\n\n" + (rendered.text or "")
    draft.forwarded = list(rendered.attachments)
    draft.kept = {item.index for item in rendered.attachments}


async def _compose_page(request: Request, session: Session, draft: Draft, *, status: int = 200,
                        error: str | None = None) -> Response:
    limit = _runtime(request).config.mail.max_message
    return _page(request, "mail/compose.html", session, status=status,
                 **await _layout(request, session, ""), draft=draft, error=error, max_message=limit,
                 max_attachments=MAX_ATTACHMENTS,
                 senders=await _store(request).addresses.sendable(session.user))


@router.get("/compose")
async def compose_page(request: Request, session: Session = Depends(viewer)) -> Response:
    query = request.query_params
    mode = query.get("mode", "new")
    draft = Draft(to=_value(query, "to", MAX_PART), subject=_value(query, "subject", MAX_PART))
    if mode in ("reply", "replyall", "forward"):
        name, uid, raw, rendered = await _original(request, session, query.get("folder", ""), query.get("uid", ""))
        if mode == "forward":
            _forward_draft(draft, raw, rendered)
            draft.forward_folder, draft.forward_uid = name, str(uid)
        else:
            await _reply_draft(request, session, draft, mode, raw, rendered)
            draft.reply_folder, draft.reply_uid = name, str(uid)
    elif mode != "new":
        raise InvalidInput("mode is new, reply, replyall or forward")
    return await _compose_page(request, session, draft)


async def _attachments(request: Request, session: Session, form: FormData, draft: Draft,
                       limit: int) -> list[tuple[str, str, bytes]]:
    parts = [part for part in form.getlist("attachments") if isinstance(part, UploadFile) and part.filename]
    if sum(part.size or 0 for part in parts) > limit:
        raise TooLarge(f"the attachments are larger than the limit of {_size(limit)} per message (mail.max_message)")
    files = []
    for part in parts:
        content_type = part.content_type
        if not content_type or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(part.filename or "")[0] or "application/octet-stream"
        files.append((part.filename or "attachment", content_type, await part.read()))
    if draft.forward_folder and draft.forward_uid:
        # The original's attachments go along as they were (the form only names them).
        _, _, raw, rendered = await _original(request, session, draft.forward_folder, draft.forward_uid)
        draft.forwarded = list(rendered.attachments)
        for item in rendered.attachments:
            if item.index in draft.kept:
                files.append(await offload.run(message.attachment, raw, item.index))
    return files


def _declared_length(request: Request) -> int | None:
    return _number(request.headers.get("content-length"), 18)


@router.post("/send")
async def send_message(request: Request) -> Response:
    session = await viewer(request)
    runtime = _runtime(request)
    limit = runtime.config.mail.max_message
    declared = _declared_length(request)
    # The form parser spools attachments before the token is seen: refuse what could
    # never be sent before reading it.
    if declared is None or declared > limit + FORM_OVERHEAD:
        raise TooLarge(f"a message with its attachments is limited to {_size(limit)} (mail.max_message)")
    form = await request.form(max_files=MAX_ATTACHMENTS, max_part_size=MAX_PART)
    try:
        await check_csrf(request, session.csrf_token)
        draft = Draft.from_form(form)
        try:
            return await _send(request, session, form, draft, limit)
        except (InvalidInput, NotFound, Forbidden, TooLarge) as error:
            if is_htmx(request):
                raise
            # The form comes back as it was, saying what to change.
            return await _compose_page(request, session, draft, status=status_of(error), error=error.detail)
    finally:
        await form.close()


async def _send(request: Request, session: Session, form: FormData, draft: Draft, limit: int) -> Response:
    store = _store(request)
    files = await _attachments(request, session, form, draft, limit)
    done = await compose_and_send(_runtime(request), session.user, Outgoing(
        sender=draft.sender or None, to=[draft.to], cc=[draft.cc], bcc=[draft.bcc], subject=draft.subject,
        text=draft.body, in_reply_to=draft.in_reply_to or None, references=draft.references.split(),
        attachments=files))
    sent = done.sent
    if draft.reply_folder and draft.reply_uid:
        try:
            await store.store_flags(session.user, _folder(draft.reply_folder), [_uid(draft.reply_uid)],
                                    ["\\Answered"], "add")
        except AgoraError:
            pass  # the original was moved or deleted meanwhile; the reply went out all the same
    return _done(request, folder_url(INBOX, notice="queued" if sent.queued else "sent"))
