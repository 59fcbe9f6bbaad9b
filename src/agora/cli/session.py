"""`agora login`, `agora logout`, `agora whoami`: the command line as an API client."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from agora.cli import credentials
from agora.cli.common import REFUSED, USAGE, fail, logged_in_client, os_user, prompt_password, read_password_stdin

if TYPE_CHECKING:
    from agora.client import AgoraError, Client

# Revoking an old token is a courtesy: do not keep the user waiting on a dead server.
REVOKE_TIMEOUT = 5.0


def _client(url: str, token: str | None, verify: bool | str, timeout: float = 30.0) -> "Client":
    from agora.client import Client

    return Client(url, token, verify=verify, timeout=timeout)


def _refused(error: "AgoraError", hint: str = "") -> NoReturn:
    from agora.client import Unauthorized

    message = error.message
    if isinstance(error, Unauthorized) and hint:
        message = f"{message} ({hint})"
    fail(message, REFUSED)


def _stored() -> credentials.Credentials | None:
    try:
        return credentials.load()
    except credentials.CredentialsError as error:
        fail(str(error), USAGE)


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise click.BadParameter("give the server's address as http://HOST:PORT or https://HOST:PORT",
                                 param_hint="URL")
    return value.rstrip("/")


@click.command()
@click.argument("url")
@click.option("--user", "-u", "username", default=None, metavar="NAME",
              help="Account to log in as (default: your login name).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate.")
@click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Trust this CA certificate (PEM), e.g. the server's DATA_DIR/tls/cert.pem.")
@click.option("--token-name", default=None, metavar="LABEL",
              help="Label of the new token, as listed on the server (default: agora-cli@HOST).")
def login(url: str, username: str | None, password_stdin: bool, insecure: bool, ca_cert: str | None,
          token_name: str | None) -> None:
    """Log in to the Agora server at URL and keep an API token for the other commands."""
    from agora.client import AgoraError, ConnectionFailed

    url = _url(url)
    if insecure and ca_cert:
        raise click.UsageError("--insecure and --ca-cert exclude each other")
    verify: bool | str = False if insecure else str(Path(ca_cert).resolve()) if ca_cert else True
    username = username or os_user()
    token_name = token_name or f"agora-cli@{socket.gethostname()}"[:100]
    password = read_password_stdin() if password_stdin else prompt_password(f"Password for {username} at {url}: ")
    try:
        previous = credentials.load()
    except credentials.CredentialsError:
        previous = None  # a damaged file is what a new login replaces
    with _client(url, None, verify) as client:
        try:
            new = client.login(username, password, name=token_name)
        except ConnectionFailed as error:
            hint = "; use --ca-cert FILE or --insecure" if "certificate" in error.message else ""
            fail(error.message + hint, REFUSED)
        except AgoraError as error:
            _refused(error)
    file = credentials.save(credentials.Credentials(url=url, user=username, token=new.token,
                                                    token_id=new.id, verify=verify))
    if previous is not None and previous.token_id and previous.token != new.token:
        _revoke(previous)
    click.echo(f"Logged in to {url} as {username} (token {new.name!r}, saved in {file}).")


def _revoke(stored: credentials.Credentials) -> str | None:
    """Revoke a stored token on its server; returns why it could not be, if it could not."""
    from agora.client import AgoraError, NotFound, Unauthorized

    if not stored.token_id:
        return "its id is unknown"
    try:
        with _client(stored.url, stored.token, stored.verify, timeout=REVOKE_TIMEOUT) as client:
            client.revoke_token(stored.token_id)
    except (Unauthorized, NotFound):
        return None  # already revoked, expired, or its user is gone: nothing to undo
    except AgoraError as error:
        return error.message
    return None


@click.command()
def logout() -> None:
    """Revoke the stored token on the server and forget it here."""
    stored = _stored()
    if stored is None:
        click.echo("Not logged in.")
        return
    problem = _revoke(stored)
    credentials.delete()
    if problem:
        click.echo(f"agora: the token could not be revoked on the server: {problem}", err=True)
    click.echo(f"Logged out of {stored.url}.")


@click.command()
def whoami() -> None:
    """Show who the stored token (or AGORA_URL and AGORA_TOKEN) logs in as."""
    with logged_in_client() as client:
        me = client.me()
        url = client.base_url
    click.echo(f"{me.name} ({me.role}) at {url}")
