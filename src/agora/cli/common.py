"""What the sub-commands share: exit codes, one-line failures, settings loading.

Exit codes: 0 done, 1 refused (by the server or the user directory), 2 usage or
configuration error. Failures are one line on stderr, never a traceback.
"""

from __future__ import annotations

import getpass
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

import click

from agora import config as configuration

if TYPE_CHECKING:
    from agora.client import Client

REFUSED = 1
USAGE = 2


def fail(message: str, code: int = REFUSED) -> NoReturn:
    click.echo(f"agora: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config`` and one ``--<section>-<key>`` flag per setting."""
    for setting in reversed(configuration.SETTINGS):
        func = click.option(setting.flag, setting.key.replace(".", "__"), default=None, metavar="VALUE",
                            help=f"{setting.doc} [env {setting.env}]")(func)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                        help="TOML settings file (default DATA_DIR/agora.toml if present).")(func)


def load_config(config_file: str | None, flags: dict[str, Any]) -> configuration.Config:
    """The validated configuration; a bad setting exits 2 with one line naming it."""
    values = {k.replace("__", "."): v for k, v in flags.items() if v is not None}
    try:
        return configuration.load(values, config_file=config_file)
    except configuration.ConfigError as error:
        fail(f"bad setting: {error}", USAGE)


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return f"uid{os.getuid()}"


def read_password_stdin() -> str:
    """One line of stdin, as `docker login --password-stdin` reads it."""
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        fail("no password on stdin", USAGE)
    return password


def _has_terminal() -> bool:
    if os.name == "nt":
        return True  # getpass reads the console there
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


def prompt_password(prompt: str) -> str:
    """Ask on the terminal without echo, as getpass does; with no terminal at all
    (a service, a pipeline), read a line of stdin without getpass's echo warning."""
    try:
        if _has_terminal():
            return getpass.getpass(prompt)
        click.echo(prompt, nl=False, err=True)
        line = sys.stdin.readline()
        click.echo(err=True)
    except EOFError:
        line = ""
    if not line:
        fail("no password given", USAGE)
    return line.rstrip("\r\n")


def new_password(name: str, from_stdin: bool) -> str:
    """A new password for ``name``: from stdin, or typed twice."""
    if from_stdin:
        return read_password_stdin()
    first = prompt_password(f"New password for {name}: ")
    if prompt_password("Type it again: ") != first:
        fail("the two passwords differ; nothing changed", USAGE)
    return first


@contextmanager
def logged_in_client() -> Iterator["Client"]:
    """A client with the stored token (or AGORA_URL and AGORA_TOKEN); every refusal
    ends the command with one line. Each service's commands start here."""
    from agora.cli import credentials
    from agora.client import AgoraError, Client, Unauthorized

    try:
        url, token, verify = credentials.current()
    except credentials.CredentialsError as error:
        fail(str(error), USAGE)
    if not url or not token:
        fail("not logged in: run `agora login URL` (or set AGORA_URL and AGORA_TOKEN)", REFUSED)
    try:
        with Client(url, token, verify=verify) as client:
            yield client
    except Unauthorized as error:
        fail(f"{error.message} (run `agora login` again)", REFUSED)
    except AgoraError as error:
        fail(error.message, REFUSED)
    except OSError as error:
        fail(f"{error.filename or 'local file'}: {error.strerror or error}", REFUSED)
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume", 130)
