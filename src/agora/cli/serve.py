"""`agora serve`."""

from __future__ import annotations

import logging
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
    try:
        code = server.run(config)
    except configuration.ConfigError as error:
        fail(f"bad setting: {error}", USAGE)
    sys.exit(code)
