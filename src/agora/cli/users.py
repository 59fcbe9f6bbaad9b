"""`agora user ...`: the user directory, administered on the data dir itself.

These open the metadata database the server uses (SQLite in the data dir, or the
configured PostgreSQL), so they work whether or not a server is running, and a running
server sees each change at once: it reads users from the database on every login.
Every change is audited with the actor ``cli:<OS user>``.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, TypeVar

import click

from agora import config as configuration
from agora.cli.common import REFUSED, USAGE, fail, load_config, new_password, os_user

if TYPE_CHECKING:
    from agora.core.identity import Identity

T = TypeVar("T")


def actor() -> str:
    return f"cli:{os_user()}"


def data_dir_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                        help="TOML settings file (default DATA_DIR/agora.toml if present).")(func)
    return click.option("--data-dir", default=None, metavar="DIR",
                        help="The server's data dir [env AGORA_DATA_DIR; default ./agora-data].")(func)


class Directory:
    """The user directory of a data dir, open for a few calls.

    Each call is its own event-loop run, so that prompts in between happen with no loop
    running and Ctrl-C interrupts them at once (the loop's SIGINT handler would only
    cancel its task once the prompt returned).
    """

    def __init__(self, runner: asyncio.Runner, identity: "Identity"):
        self._runner = runner
        self.identity = identity

    def run(self, call: Awaitable[T]) -> T:
        return self._runner.run(call)  # type: ignore[arg-type]


@contextmanager
def _refusals(config: configuration.Config) -> Iterator[None]:
    """Turn what the directory or the database refuse into one line and an exit code."""
    from sqlalchemy.exc import SQLAlchemyError

    from agora.core.database import DatabaseError, SchemaTooNew
    from agora.core.errors import AgoraError

    try:
        yield
    except AgoraError as error:
        fail(error.detail, REFUSED)
    except SchemaTooNew as error:
        fail(str(error), USAGE)
    except DatabaseError as error:
        fail(str(error), REFUSED)
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        fail(f"cannot use the metadata database: {reason}", REFUSED)
    except OSError as error:
        fail(f"cannot open the data dir {config.data_path}: {error.strerror or error}", USAGE)


@contextmanager
def user_directory(data_dir: str | None, config_file: str | None, *, create: bool = False) -> Iterator[Directory]:
    """The configured data dir's user directory, closed when the block ends.

    Only ``create`` may start a new data dir: elsewhere a mistyped path would show an
    empty directory instead of saying that nothing is there.
    """
    from agora.core.runtime import Runtime
    from agora.server import attach_services

    config = load_config(config_file, {"data_dir": data_dir})
    if not create and not config.data_path.is_dir():
        fail(f"no data dir at {config.data_path} (pass --data-dir DIR or set AGORA_DATA_DIR)", USAGE)
    with asyncio.Runner() as runner, _refusals(config):
        runtime = runner.run(Runtime.open(config))
        attach_services(runtime)
        try:
            yield Directory(runner, runtime.identity)
        finally:
            runner.run(runtime.close())


def _quota(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return configuration.BY_KEY["identity.default_quota"].parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value /= 1024
    else:
        unit = "TiB"
    return f"{int(value)} {unit}" if value.is_integer() else f"{value:.1f} {unit}"


@click.group("user")
def user() -> None:
    """Manage accounts in the data dir, whether or not the server is running."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the account an admin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--quota", callback=_quota, default=None, metavar="SIZE",
              help="Storage quota, e.g. 500M or 10G (default: identity.default_quota).")
@data_dir_options
def add(name: str, admin: bool, password_stdin: bool, quota: int | None, data_dir: str | None,
        config_file: str | None) -> None:
    """Create the account NAME."""
    from agora.core.errors import Conflict
    from agora.core.identity import validate_name

    with user_directory(data_dir, config_file, create=True) as directory:
        identity = directory.identity
        validate_name(name)
        # Checked before prompting, so that nobody types a password twice for nothing.
        if directory.run(identity.find_user(name)) is not None:
            raise Conflict(f"user {name!r} already exists")
        password = new_password(name, password_stdin)
        directory.run(identity.create_user(name, password, role="admin" if admin else "user",
                                           quota_bytes=quota, actor=actor()))
        users = directory.run(identity.list_users())
    click.echo(f"Created {'admin' if admin else 'user'} {name}.")
    if not any(u.is_admin and not u.disabled for u in users):
        click.echo("agora: note: there is no enabled admin yet; add one with `agora user add NAME --admin`",
                   err=True)


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@data_dir_options
def list_(as_json: bool, data_dir: str | None, config_file: str | None) -> None:
    """List every account."""

    with user_directory(data_dir, config_file) as directory:
        users = directory.run(directory.identity.list_users())
    if as_json:
        click.echo(json.dumps([{"name": u.name, "role": u.role, "disabled": u.disabled,
                                "quota_bytes": u.quota_bytes, "created_at": u.created_at.isoformat(),
                                "updated_at": u.updated_at.isoformat()} for u in users], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("name", "role", "status", "quota", "created"):
        table.add_column(column, justify="right" if column == "quota" else "left")
    for u in users:
        table.add_row(u.name, u.role, "disabled" if u.disabled else "enabled", human_size(u.quota_bytes),
                      u.created_at.strftime("%Y-%m-%d %H:%M UTC"))
    Console(soft_wrap=True).print(table)


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@data_dir_options
def passwd(name: str, password_stdin: bool, data_dir: str | None, config_file: str | None) -> None:
    """Set a new password for NAME (this also ends their web sessions)."""

    with user_directory(data_dir, config_file) as directory:
        directory.run(directory.identity.get_user(name))
        password = new_password(name, password_stdin)
        directory.run(directory.identity.update_user(name, password=password, actor=actor()))
    click.echo(f"Changed the password of {name}.")


def _set_disabled(name: str, disabled: bool, data_dir: str | None, config_file: str | None) -> None:
    with user_directory(data_dir, config_file) as directory:
        directory.run(directory.identity.update_user(name, disabled=disabled, actor=actor()))
    click.echo(f"{'Disabled' if disabled else 'Enabled'} {name}.")


@user.command("disable")
@click.argument("name")
@data_dir_options
def disable(name: str, data_dir: str | None, config_file: str | None) -> None:
    """Stop NAME from logging in on any protocol; their tokens stop working too."""
    _set_disabled(name, True, data_dir, config_file)


@user.command("enable")
@click.argument("name")
@data_dir_options
def enable(name: str, data_dir: str | None, config_file: str | None) -> None:
    """Let a disabled NAME log in again."""
    _set_disabled(name, False, data_dir, config_file)


@user.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@data_dir_options
def delete(name: str, yes: bool, data_dir: str | None, config_file: str | None) -> None:
    """Delete the account NAME with its tokens and sessions."""

    with user_directory(data_dir, config_file) as directory:
        directory.run(directory.identity.get_user(name))
        if not yes and not _confirm(f"Delete the account {name!r}? This cannot be undone."):
            fail("nothing deleted", REFUSED)
        directory.run(directory.identity.delete_user(name, actor=actor()))
    click.echo(f"Deleted {name}.")


def _confirm(question: str) -> bool:
    from rich.prompt import Confirm

    try:
        return Confirm.ask(question, default=False)
    except EOFError:
        return False
