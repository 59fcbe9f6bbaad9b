"""The `agora` command: one module per group of sub-commands.

Each module imports what is heavy (the server, the database, httpx, rich) inside its
commands, so `agora --help` and `agora serve` start without paying for the others.
Services add their group here with one `cli.add_command` line.
"""

from __future__ import annotations

import click

from agora import __version__
from agora.cli.common import load_config
from agora.cli.bank import bank
from agora.cli.config_cmd import config
from agora.cli.files import files
from agora.cli.mail import mail
from agora.cli.serve import serve
from agora.cli.session import login, logout, whoami
from agora.cli.sql import sql
from agora.cli.users import user


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agora")
def cli() -> None:
    """Agora: web, files, mail, bank and hosted SQL behind one user directory."""


cli.add_command(serve)
cli.add_command(login)
cli.add_command(logout)
cli.add_command(whoami)
cli.add_command(user)
cli.add_command(config)
cli.add_command(files)
cli.add_command(mail)
cli.add_command(bank)
cli.add_command(sql)


def main() -> None:
    cli()


__all__ = ["cli", "main", "load_config"]
