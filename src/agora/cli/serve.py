"""`agora serve`."""

from __future__ import annotations

import logging
import os
import stat
import sys

import click

from agora import config as configuration
from agora.cli.common import USAGE, fail, load_config, settings_options


@click.command()
@settings_options
def serve(config_file: str | None, **flags: str) -> None:
    """Run every enabled service until SIGTERM or SIGINT."""
    # Imported here so that the other commands do not pay for the server's imports.
    from agora import server
    from agora.core import logs

    config = load_config(config_file, flags)
    logs.setup(config.log_format, config.log_level, access_log=config.http.access_log)
    for name in configuration.unknown_env():
        logging.getLogger("agora").warning("ignoring %s: no such setting", name)
    private_files(config)
    try:
        code = server.run(config)
    except configuration.ConfigError as error:
        fail(f"bad setting: {error}", USAGE)
    sys.exit(code)


def private_files(config: configuration.Config) -> None:
    """Everything the server creates from now on is its own alone: 0600 files, 0700
    folders (the metadata database, hosted databases, users' files, Maildirs, the TLS
    key), whatever the mode of a data dir made beforehand. Through the umask, so no
    writer can forget; the embedded PostgreSQL is given its directories by chown
    (sql/engine.py), and needs no group or other access either.

    A data dir others can read is the admin's choice to revisit: warned about, not
    changed (it may hold things that are not Agora's).
    """
    os.umask(0o077)
    try:
        mode = config.data_path.stat().st_mode
    except OSError:
        return  # made at start, as 0700
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        logging.getLogger("agora").warning(
            "the data dir %s is open to other users (mode %s): they may read the names of its files "
            "and folders; chmod 700 it (what Agora creates in it is private either way)",
            config.data_path, stat.filemode(mode))
