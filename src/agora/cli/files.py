"""`agora files ...`: your file tree on the server, through the stored login.

``put`` and ``get`` copy as ``cp -r`` does: into a folder that exists, else to the name
given; folders go with all they hold. Transfers show a progress bar on stderr and
resume what an earlier, interrupted run left (``--no-resume`` starts over).
"""

from __future__ import annotations

import re
from datetime import timezone
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import click

from agora.cli.common import logged_in_client, prompt_password, read_password_stdin

if TYPE_CHECKING:
    from agora.client import Client, TransferProgress

_DURATION = re.compile(r"\s*(\d{1,9})\s*(s|m|h|d|w)?\s*", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _size(value: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} B"


def _duration(value: str) -> int:
    match = _DURATION.fullmatch(value)
    if match is None:
        raise click.BadParameter("give seconds, or a number with s, m, h, d or w (e.g. 7d)")
    return int(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


class _Bars:
    """One rich progress bar per file on stderr, replaced by a line when it is done."""

    def __init__(self, verb: str):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.verb = verb
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=self.console,
                                 transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "_Bars":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, event: "TransferProgress") -> None:
        task = self.tasks.get(event.remote)
        if task is None:
            name = PurePosixPath(event.remote).name or event.remote
            task = self.tasks[event.remote] = self.progress.add_task(name, total=event.total)
            if event.resumed_from:
                self.progress.console.print(f"resuming {event.remote} at {_size(event.resumed_from)}")
        self.progress.update(task, completed=event.done, total=event.total)
        if event.total is not None and event.done >= event.total:
            self.progress.remove_task(self.tasks.pop(event.remote))
            self.progress.console.print(f"{self.verb} {event.remote} ({_size(event.total)})", highlight=False)


def _remote_is_dir(client: "Client", path: str) -> bool:
    from agora.client import NotFound

    try:
        return client.files.stat(path).is_dir
    except NotFound:
        return False


@click.group()
def files() -> None:
    """Your files on the server: list, transfer, share (after `agora login`)."""


@files.command("ls")
@click.argument("path", default="/")
def ls(path: str) -> None:
    """List a folder (the root by default), or describe a file."""
    from agora.client import Conflict

    with logged_in_client() as client:
        try:
            entries = client.files.ls(path)
        except Conflict:
            entries = [client.files.stat(path)]
    for entry in entries:
        when = entry.mtime.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
        size = "-" if entry.is_dir else _size(entry.size)
        click.echo(f"{'d' if entry.is_dir else '-'} {size:>10}  {when}  {entry.name}{'/' if entry.is_dir else ''}")


@files.command()
@click.argument("local", type=click.Path(exists=True, file_okay=True, dir_okay=True))
@click.argument("remote", default="/")
@click.option("--no-resume", is_flag=True, help="Send every file whole, even one partly there already.")
def put(local: str, remote: str, no_resume: bool) -> None:
    """Upload LOCAL (a file, or a folder with all it holds) to REMOTE."""
    name = PurePosixPath(local.rstrip("/") or "/").name
    with logged_in_client() as client:
        if remote.endswith("/") or _remote_is_dir(client, remote):
            remote = remote.rstrip("/") + "/" + name
        with _Bars("sent") as bars:
            stored = client.files.put(local, remote, resume=not no_resume, progress=bars)
    click.echo(f"{len(stored)} file(s), {_size(sum(e.size for e in stored))} stored under {remote}")


@files.command()
@click.argument("remote")
@click.argument("local", type=click.Path(), default=".")
@click.option("--no-resume", is_flag=True, help="Fetch every file whole, ignoring .part files left before.")
def get(remote: str, local: str, no_resume: bool) -> None:
    """Download REMOTE (a file, or a folder with all it holds) to LOCAL."""
    from pathlib import Path

    target = Path(local)
    with logged_in_client() as client:
        entry = client.files.stat(remote)
        if target.is_dir():
            target = target / (entry.name or "files")
        with _Bars("got") as bars:
            fetched = client.files.get(remote, target, resume=not no_resume, progress=bars)
    click.echo(f"{len(fetched)} file(s), {_size(sum(e.size for e in fetched))} saved in {target}")


@files.command()
@click.argument("path")
@click.option("-r", "--recursive", is_flag=True, help="Delete a folder with all it holds.")
def rm(path: str, recursive: bool) -> None:
    """Delete a file, or an empty folder (any folder with -r)."""
    with logged_in_client() as client:
        client.files.rm(path, recursive=recursive)


@files.command()
@click.argument("source")
@click.argument("target")
@click.option("--overwrite", is_flag=True, help="Replace what is at TARGET.")
def mv(source: str, target: str, overwrite: bool) -> None:
    """Move or rename SOURCE to TARGET (into TARGET when it is a folder)."""
    with logged_in_client() as client:
        if _remote_is_dir(client, target):
            target = target.rstrip("/") + "/" + PurePosixPath(source.rstrip("/")).name
        entry = client.files.mv(source, target, overwrite=overwrite)
    click.echo(entry.path)


@files.command()
@click.argument("path")
@click.option("-p", "--parents", is_flag=True, help="Create missing parent folders too.")
def mkdir(path: str, parents: bool) -> None:
    """Create a folder."""
    with logged_in_client() as client:
        client.files.mkdir(path, parents=parents)


@files.command()
def du() -> None:
    """Storage used and your quota."""
    with logged_in_client() as client:
        usage = client.files.du()
    share = f" ({100 * usage.used / usage.quota:.1f}%)" if usage.quota else ""
    click.echo(f"{_size(usage.used)} used of {_size(usage.quota)}{share}")


@files.command()
@click.argument("path")
@click.option("--expires", "expires", default=None, metavar="DURATION",
              help="Stop working after this long: seconds, or e.g. 30m, 12h, 7d (default: the server's longest).")
@click.option("--password", "ask_password", is_flag=True, help="Ask for a password visitors must give.")
@click.option("--password-stdin", is_flag=True, help="Read that password from the first line of stdin.")
def share(path: str, expires: str | None, ask_password: bool, password_stdin: bool) -> None:
    """Make a link to PATH that works without an account; prints the link."""
    if ask_password and password_stdin:
        raise click.UsageError("--password and --password-stdin exclude each other")
    seconds = _duration(expires) if expires is not None else None
    password = read_password_stdin() if password_stdin else prompt_password("Link password: ") if ask_password else None
    with logged_in_client() as client:
        link = client.files.share(path, expires_in=seconds, password=password)
    click.echo(link.url)
    until = link.expires_at.strftime("%Y-%m-%d %H:%M UTC") if link.expires_at else "never"
    click.echo(f"id {link.id}, expires {until}{', needs a password' if link.password else ''}", err=True)


@files.command()
def shares() -> None:
    """Your share links (the links themselves are shown only when made)."""
    with logged_in_client() as client:
        links = client.files.shares()
    for link in links:
        state = "active" if link.active else "revoked" if link.revoked else "expired"
        until = link.expires_at.strftime("%Y-%m-%d %H:%M") if link.expires_at else "never"
        click.echo(f"{link.id}  {state:<7}  until {until}  {link.downloads:>5} downloads  "
                   f"{'password  ' if link.password else ''}{link.path}")


@files.command()
@click.argument("share_id", metavar="ID")
def unshare(share_id: str) -> None:
    """Revoke a share link (its ID is listed by `agora files shares`)."""
    with logged_in_client() as client:
        client.files.unshare(share_id)
