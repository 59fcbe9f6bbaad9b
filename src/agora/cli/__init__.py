"""The `agora` command."""

from __future__ import annotations

import sys

import click

from agora import __version__, config as configuration


@click.group()
@click.version_option(__version__, prog_name="agora")
def cli() -> None:
    """Agora: web, files, mail, bank and hosted SQL behind one user directory."""


def _serve_options(func):
    for setting in reversed(configuration.SETTINGS):
        func = click.option(setting.flag, setting.key.replace(".", "__"), default=None, metavar="VALUE",
                            help=f"{setting.doc} [env {setting.env}]")(func)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                        help="TOML settings file (default DATA_DIR/agora.toml if present).")(func)


def load_config(config_file: str | None, flags: dict) -> configuration.Config:
    values = {k.replace("__", "."): v for k, v in flags.items() if v is not None}
    try:
        return configuration.load(values, config_file=config_file)
    except configuration.ConfigError as error:
        click.echo(f"agora: bad setting: {error}", err=True)
        sys.exit(2)


@cli.command()
@_serve_options
def serve(config_file: str | None, **flags: str) -> None:
    """Run every enabled service until SIGTERM or SIGINT."""
    from agora import server
    from agora.core import logs

    config = load_config(config_file, flags)
    logs.setup(config.log_format, config.log_level)
    import logging
    for name in configuration.unknown_env():
        logging.getLogger("agora").warning("ignoring %s: no such setting", name)
    try:
        code = server.run(config)
    except configuration.ConfigError as error:
        click.echo(f"agora: bad setting: {error}", err=True)
        sys.exit(2)
    sys.exit(code)


def main() -> None:
    cli()
