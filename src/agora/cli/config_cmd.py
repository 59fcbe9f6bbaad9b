"""`agora config reference` and `agora config check`."""

from __future__ import annotations

import re
from typing import Any

import click

from agora import config as configuration
from agora.cli.common import load_config, settings_options

# Secrets that `config check` must never print: it is run into terminals and CI logs.
HIDDEN = {"admin.password"}


@click.group("config")
def config() -> None:
    """Inspect Agora's settings."""


@config.command()
def reference() -> None:
    """Print every setting, its environment variable, flag and default (Markdown)."""
    click.echo(configuration.reference_markdown(), nl=False)


def shown(key: str, value: Any) -> str:
    if key in HIDDEN:
        return "(hidden)" if value else '""'
    if key == "database.url" and isinstance(value, str):
        # postgresql://user:secret@host/db: keep where it points, not the password.
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", value) or '""'
    return configuration.show_value(value)


@config.command()
@settings_options
def check(config_file: str | None, **flags: str) -> None:
    """Validate the settings as `agora serve` would, and show each value and where it comes from.

    Takes the same --config and --<setting> flags as `agora serve`; a bad setting exits 2.
    """
    settings = load_config(config_file, flags)
    rows = [(s.key, shown(s.key, settings[s.key]), settings.sources.get(s.key, "default"))
            for s in configuration.SETTINGS]
    key_width = max(len(row[0]) for row in rows)
    value_width = min(40, max(len(row[1]) for row in rows))
    for key, value, source in rows:
        click.echo(f"{key:<{key_width}}  {value:<{value_width}}  {source}")
    for name in configuration.unknown_env():
        click.echo(f"agora: warning: {name} names no setting; it is ignored", err=True)
