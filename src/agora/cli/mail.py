"""`agora mail ...`: your mailbox on the server, through the stored login.

A message is named by its ID, the UID that ``agora mail ls`` shows, in a folder
(``--folder``, INBOX by default).
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agora.cli.common import USAGE, fail, logged_in_client

if TYPE_CHECKING:
    from agora.client import MailMessage

INBOX = "INBOX"
# Flag letters of `agora mail ls`, as mutt shows them.
MARKS = (("N", "unread"), ("!", "flagged"), ("r", "answered"), ("+", "has attachments"))
MAX_SENDER = 30  # characters of the sender shown by `ls`; the subject has the rest of the line
MIN_SUBJECT = 20


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} B"


def _html_text(markup: str) -> str:
    """Readable text of a (sanitised) HTML body, for a terminal."""
    markup = re.sub(r"(?i)<br\s*/?>|</p\s*>|</div\s*>|</li\s*>|</h[1-6]\s*>|</tr\s*>", "\n", markup)
    text = html.unescape(re.sub(r"<[^>]*>", "", markup))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _printable(text: str) -> str:
    # Mail is written by strangers: no terminal escape sequences from it.
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f\x9b]", "", text)


@click.group()
def mail() -> None:
    """Your mail: send, list, read, file away (after `agora login`)."""


@mail.command()
@click.option("--to", "to", multiple=True, required=True, metavar="ADDRESS", help="A recipient (repeat for more).")
@click.option("--cc", "cc", multiple=True, metavar="ADDRESS", help="A copy to (repeat for more).")
@click.option("--bcc", "bcc", multiple=True, metavar="ADDRESS", help="A blind copy to (repeat for more).")
@click.option("--subject", "-s", default="", help="The subject.")
@click.option("--body", default=None, metavar="TEXT", help="The text; without it, read from stdin.")
@click.option("--attach", "-a", "attach", multiple=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, readable=True), help="Attach a file (repeat for more).")
@click.option("--from", "sender", default=None, metavar="ADDRESS", help="One of your addresses (default: your own).")
@click.option("--in-reply-to", default=None, metavar="MESSAGE-ID", help="The Message-ID this answers.")
def send(to: tuple[str, ...], cc: tuple[str, ...], bcc: tuple[str, ...], subject: str, body: str | None,
         attach: tuple[str, ...], sender: str | None, in_reply_to: str | None) -> None:
    """Send a message; its text is --body, or stdin."""
    if body is None:
        if sys.stdin.isatty():
            click.echo("Type the message; end with Ctrl-D on a line of its own.", err=True)
        body = sys.stdin.read()
    with logged_in_client() as client:
        sent = client.mail.send(list(to), subject, body, cc=list(cc), bcc=list(bcc),
                                attachments=[Path(path) for path in attach], sender=sender,
                                in_reply_to=in_reply_to)
    parts = []
    if sent.delivered:
        parts.append(f"delivered to {', '.join(sent.delivered)}")
    if sent.queued:
        parts.append(f"queued for {', '.join(sent.queued)}")
    click.echo(f"sent {sent.message_id} ({_size(sent.size)}): {'; '.join(parts)}")


@mail.command("ls")
@click.argument("folder", default=INBOX)
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1, 500),
              help="How many messages, newest first.")
@click.option("--before", "before_uid", default=None, type=click.IntRange(1), metavar="ID",
              help="Only messages older than ID (for the next page).")
def ls(folder: str, limit: int, before_uid: int | None) -> None:
    """List a folder's messages, newest first. Flags: N unread, ! flagged, r answered,
    + attachments."""
    from rich.console import Console
    from rich.table import Table

    with logged_in_client() as client:
        page = client.mail.page(folder, limit, before_uid=before_uid)
    console = Console(highlight=False)
    if not page.messages:
        console.print(f"no messages in {page.folder}", markup=False)
        return
    cells = []
    for item in page.messages:
        marks = "".join(letter if on else " " for (letter, _), on in zip(
            MARKS, (not item.seen, item.flagged, item.answered, item.has_attachments)))
        when = (item.date or item.received).astimezone().strftime("%Y-%m-%d %H:%M")
        cells.append((str(item.uid), marks, when, _printable(item.from_),
                      _printable(item.subject) or "(no subject)", _size(item.size), item.seen))
    # Rich squeezes every column of a table too wide for the terminal, down to nothing;
    # only the sender and the subject give way here, cut with an ellipsis.
    fixed = [max(len(header), *(len(row[i]) for row in cells)) for i, header in ((0, "ID"), (1, ""), (2, "date"),
                                                                                    (5, "size"))]
    sender = min(MAX_SENDER, max(len("from"), *(len(row[3]) for row in cells)))
    subject = max(MIN_SUBJECT, console.width - sum(fixed) - sender - 2 * 5)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("date", no_wrap=True)
    table.add_column("from", overflow="ellipsis", no_wrap=True, max_width=sender)
    table.add_column("subject", overflow="ellipsis", no_wrap=True, max_width=subject)
    table.add_column("size", justify="right", no_wrap=True)
    for *row, seen in cells:
        table.add_row(*row, style=None if seen else "bold")
    console.print(table)
    shown = f"{len(page.messages)} of {page.total} in {page.folder}"
    more = f"; older: agora mail ls {page.folder} --before {page.next_before_uid}" if page.next_before_uid else ""
    click.echo(shown + more, err=True)


def _show(message: "MailMessage") -> None:
    for label, value in (("From", message.from_), ("To", message.to), ("Cc", message.cc),
                         ("Date", message.date.astimezone().strftime("%a, %d %b %Y %H:%M %z") if message.date else ""),
                         ("Subject", message.subject)):
        if value:
            click.echo(f"{label}: {_printable(value)}")
    click.echo()
    if message.text is not None:
        text = message.text
    elif message.html is not None:
        text = _html_text(message.html)
    else:
        text = ""
    click.echo(_printable(text.replace("\t", "    ")).rstrip("\n") if text else "(no text)")
    if message.attachments:
        click.echo()
        for item in message.attachments:
            click.echo(f"[{item.index}] {_printable(item.filename)} ({item.content_type}, {_size(item.size)})")


@mail.command()
@click.argument("uid", metavar="ID", type=click.IntRange(1))
@click.option("--folder", "-f", default=INBOX, show_default=True, help="The folder it is in.")
@click.option("--raw", is_flag=True, help="Print the message as stored (RFC 5322), byte for byte.")
def read(uid: int, folder: str, raw: bool) -> None:
    """Show a message (headers and text) and mark it seen."""
    with logged_in_client() as client:
        if raw:
            data = client.mail.raw(folder, uid)
        else:
            message = client.mail.read(folder, uid)
        client.mail.flag(folder, uid, seen=True)
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        _show(message)


@mail.command()
@click.argument("uid", metavar="ID", type=click.IntRange(1))
@click.argument("index", type=click.IntRange(0))
@click.option("--folder", "-f", default=INBOX, show_default=True, help="The folder the message is in.")
@click.option("--output", "-o", type=click.Path(dir_okay=True, writable=True), default=None,
              help="Where to save it (a file, or a folder); default: its name, here. '-' for stdout.")
def attachment(uid: int, index: int, folder: str, output: str | None) -> None:
    """Save attachment INDEX (as `agora mail read` numbers them) of message ID."""
    with logged_in_client() as client:
        message = client.mail.read(folder, uid)
        listed = {item.index: item for item in message.attachments}
        if index not in listed:
            fail(f"message {uid} has no attachment {index}", USAGE)
        data = client.mail.attachment(folder, uid, index)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    # The name comes from the sender: only its last component, never a path.
    name = Path(listed[index].filename.replace("\\", "/")).name.strip() or f"attachment-{index + 1}"
    name = name if name not in (".", "..") else f"attachment-{index + 1}"
    target = Path(output) if output else Path(name)
    if target.is_dir():
        target = target / name
    target.write_bytes(data)
    click.echo(f"saved {target} ({_size(len(data))})")


@mail.command()
def folders() -> None:
    """Your folders, with their message and unread counts."""
    from rich.console import Console
    from rich.table import Table

    with logged_in_client() as client:
        items = client.mail.folders()
        usage = client.mail.quota()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("folder", "left"), ("messages", "right"), ("unread", "right"), ("size", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for item in items:
        table.add_row(item.name, str(item.messages), str(item.unseen) if item.unseen else "", _size(item.size),
                      style="bold" if item.unseen else None)
    Console(highlight=False).print(table)
    click.echo(f"{_size(usage.used)} used of {_size(usage.limit)}", err=True)


@mail.command()
@click.argument("name")
def mkdir(name: str) -> None:
    """Create a folder ('.' separates levels: Archive.2024)."""
    with logged_in_client() as client:
        client.mail.create_folder(name)


@mail.command()
@click.argument("name")
def rmdir(name: str) -> None:
    """Delete a folder and the messages in it."""
    with logged_in_client() as client:
        client.mail.delete_folder(name)


@mail.command()
@click.argument("uid", metavar="ID", type=click.IntRange(1))
@click.option("--folder", "-f", default=INBOX, show_default=True, help="The folder it is in.")
def rm(uid: int, folder: str) -> None:
    """Move a message to Trash (delete it for good when it is in Trash)."""
    with logged_in_client() as client:
        result = client.mail.delete(folder, uid)
    click.echo("deleted" if result.expunged else f"moved to {result.folder} as {result.uid}")


@mail.command()
@click.argument("uid", metavar="ID", type=click.IntRange(1))
@click.argument("target", metavar="FOLDER")
@click.option("--folder", "-f", default=INBOX, show_default=True, help="The folder it is in now.")
def mv(uid: int, target: str, folder: str) -> None:
    """Move message ID to FOLDER; prints its ID there."""
    with logged_in_client() as client:
        moved = client.mail.move(folder, uid, target)
    click.echo(f"moved to {moved.folder} as {moved.uid}")


@mail.group()
def alias() -> None:
    """Mail aliases and catch-alls (admins)."""


@alias.command("ls")
def alias_ls() -> None:
    """List every alias."""
    with logged_in_client() as client:
        items = client.mail.aliases()
    for item in items:
        click.echo(f"{item.address}  ->  {item.user}")


@alias.command("add")
@click.argument("address")
@click.argument("user")
def alias_add(address: str, user: str) -> None:
    """Deliver mail for ADDRESS (local@domain, or @domain for the catch-all) to USER."""
    with logged_in_client() as client:
        item = client.mail.add_alias(address, user)
    click.echo(f"{item.address}  ->  {item.user}")


@alias.command("rm")
@click.argument("address")
def alias_rm(address: str) -> None:
    """Remove an alias."""
    with logged_in_client() as client:
        client.mail.remove_alias(address)


@mail.group()
def senders() -> None:
    """Addresses users may send as beyond their own and their aliases (admins)."""


@senders.command("ls")
@click.argument("user", required=False)
def senders_ls(user: str | None) -> None:
    """List the allowed sender addresses (of USER only, if given)."""
    with logged_in_client() as client:
        items = client.mail.senders(user)
    for item in items:
        click.echo(f"{item.user}  may send as  {item.pattern}")


@senders.command("add")
@click.argument("user")
@click.argument("pattern")
def senders_add(user: str, pattern: str) -> None:
    """Let USER send as PATTERN: an address (news@example.org), or * for any part of
    one (*@example.org), as envelope sender and in From:."""
    with logged_in_client() as client:
        item = client.mail.allow_sender(user, pattern)
    click.echo(f"{item.user}  may send as  {item.pattern}")


@senders.command("rm")
@click.argument("user")
@click.argument("pattern")
def senders_rm(user: str, pattern: str) -> None:
    """Take back PATTERN from USER."""
    with logged_in_client() as client:
        client.mail.disallow_sender(user, pattern)
